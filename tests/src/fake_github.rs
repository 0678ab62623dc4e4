//! A fake GitHub Actions service for end-to-end tests against the real ARC
//! controller and listener.
//!
//! It speaks the subset of the protocol that ARC's clients use (GHES-style
//! config URL `http://127.0.0.1:PORT/<org>`; facts in `shared/arc-protocol.md`,
//! each endpoint checked against ARC 0.14.2's `github.com/actions/scaleset`
//! client and ARC 0.9.2's `github/actions` client):
//!
//! - `POST /api/v3/{orgs/O|enterprises/E|repos/O/R}/actions/runners/registration-token` → 201
//! - `POST /api/v3/actions/runner-registration` → tenant URL (no trailing slash) + admin JWT
//! - tenant `/_apis/runtime/runnergroups/`, `/_apis/runtime/runnerscalesets[/{id}]`,
//!   `.../{id}/sessions[/{sid}]`, `.../{id}/acquirejobs`, `.../{id}/acquirablejobs`,
//!   `.../{id}/generatejitconfig`, `/_apis/distributedtask/pools/0/agents[/{id}]`
//! - the message queue `GET /queue/{scale set}/{session}` (held, then 202) and
//!   `DELETE /queue/{scale set}/{session}/{message id}` → 204.
//!
//! The session model is the point: one message session per scale set; a
//! session whose owner stopped polling without deleting it stays active for
//! the stale-session TTL, and any create meanwhile gets the real
//! `RunnerScaleSetSessionConflictException` 409. Every call is counted
//! (`GET /_fake/stats`); `POST /_fake/control` injects stale or permanent
//! sessions. The model ([`SessionBook`]) is a plain data structure with time
//! passed in.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// The exception type GitHub names in a session-conflict 409.
pub const SESSION_CONFLICT_TYPE: &str = "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi";

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
}

impl Default for FakeGithubConfig {
    fn default() -> Self {
        Self {
            poll_hold: Duration::from_secs(10),
            stale_session_ttl: Duration::from_secs(60),
            admin_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// One message session as the fake GitHub keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// UUID string.
    pub id: String,
    /// `ownerName` sent by the listener (its hostname).
    pub owner: String,
    /// Bearer token of the message queue.
    pub queue_token: String,
    /// Time of the last activity by the owner (create, poll start or end, refresh).
    pub last_seen: Duration,
    /// Polls currently held open by the owner.
    pub open_polls: u32,
    /// How long it stays active after `last_seen` with no open poll; `None`
    /// means forever (another owner that never lets go).
    pub ttl: Option<Duration>,
}

impl Session {
    /// Whether GitHub still considers the session alive at `now`.
    pub fn is_active(&self, now: Duration) -> bool {
        match self.ttl {
            None => true,
            Some(ttl) => self.open_polls > 0 || now.saturating_sub(self.last_seen) < ttl,
        }
    }
}

/// Why a session could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConflict {
    /// Owner of the session that is still active.
    pub owner: String,
}

/// The session model: at most one active session per scale set.
#[derive(Debug, Default)]
pub struct SessionBook {
    sessions: HashMap<i64, Session>,
    next: u64,
}

impl SessionBook {
    fn new_id(&mut self, prefix: u32) -> String {
        self.next += 1;
        format!("{prefix:08x}-0000-4000-8000-{:012x}", self.next)
    }

    /// Creates a session for `owner`, unless another session of the scale
    /// set is still active at `now`. `ttl` is the stale-session TTL.
    pub fn create(
        &mut self,
        scale_set: i64,
        owner: &str,
        ttl: Option<Duration>,
        now: Duration,
    ) -> Result<Session, SessionConflict> {
        if let Some(existing) = self.sessions.get(&scale_set)
            && existing.is_active(now)
        {
            return Err(SessionConflict {
                owner: existing.owner.clone(),
            });
        }
        let id = self.new_id(0x5e55_1014);
        let queue_token = format!("queue-token-{}", self.new_id(0x70ce_0000));
        let session = Session {
            id,
            owner: owner.to_owned(),
            queue_token,
            last_seen: now,
            open_polls: 0,
            ttl,
        };
        self.sessions.insert(scale_set, session.clone());
        Ok(session)
    }

    /// The session of a scale set with this id, if it is still active.
    pub fn get(&self, scale_set: i64, session_id: &str, now: Duration) -> Option<&Session> {
        self.sessions
            .get(&scale_set)
            .filter(|s| s.id == session_id && s.is_active(now))
    }

    /// Records activity of the owner of the session that holds `queue_token`;
    /// `poll` is +1 when a poll starts, -1 when it ends, 0 otherwise. Returns
    /// the scale set and session id, or `None` for an unknown or expired token.
    pub fn touch_by_token(
        &mut self,
        queue_token: &str,
        poll: i32,
        now: Duration,
    ) -> Option<(i64, String)> {
        let (scale_set, session) = self
            .sessions
            .iter_mut()
            .find(|(_, s)| s.queue_token == queue_token)?;
        if poll >= 0 && !session.is_active(now) {
            return None;
        }
        session.last_seen = now;
        session.open_polls = session.open_polls.saturating_add_signed(poll);
        Some((*scale_set, session.id.clone()))
    }

    /// Issues a new queue token for an active session (refresh).
    pub fn refresh(&mut self, scale_set: i64, session_id: &str, now: Duration) -> Option<Session> {
        let token = format!("queue-token-{}", self.new_id(0x70ce_0000));
        let session = self
            .sessions
            .get_mut(&scale_set)
            .filter(|s| s.id == session_id && s.is_active(now))?;
        session.queue_token = token;
        session.last_seen = now;
        Some(session.clone())
    }

    /// Deletes a session; true when it existed.
    pub fn delete(&mut self, scale_set: i64, session_id: &str) -> bool {
        if self
            .sessions
            .get(&scale_set)
            .is_some_and(|s| s.id == session_id)
        {
            self.sessions.remove(&scale_set);
            true
        } else {
            false
        }
    }

    /// Removes every session of a scale set.
    pub fn clear(&mut self, scale_set: i64) {
        self.sessions.remove(&scale_set);
    }

    /// The session a scale set has, active or not.
    pub fn current(&self, scale_set: i64) -> Option<&Session> {
        self.sessions.get(&scale_set)
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

/// One call to a session endpoint, for timing measurements.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionEvent {
    /// Milliseconds since the fake started.
    pub at_ms: u64,
    /// `create`, `refresh` or `delete`.
    pub op: String,
    /// Scale set id.
    pub scale_set_id: i64,
    /// Owner sent (create) or owning the session.
    pub owner: String,
    /// HTTP status answered.
    pub status: u16,
}

/// What `GET /_fake/stats` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Calls per endpoint name (e.g. `session_create`).
    pub calls: BTreeMap<String, u64>,
    /// Calls per endpoint and status, `"session_create 409"`.
    pub responses: BTreeMap<String, u64>,
    /// Every session create/refresh/delete, in order.
    pub session_events: Vec<SessionEvent>,
    /// Milliseconds since the fake started, when the stats were taken.
    pub now_ms: u64,
}

impl Stats {
    /// Calls of one endpoint.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.calls.get(endpoint).copied().unwrap_or(0)
    }

    /// Answers of one endpoint with one status.
    pub fn responses(&self, endpoint: &str, status: u16) -> u64 {
        self.responses
            .get(&format!("{endpoint} {status}"))
            .copied()
            .unwrap_or(0)
    }
}

/// Requests accepted by `POST /_fake/control`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Control {
    /// Plants a session held by `owner` that stays active for `ttl_ms` from
    /// now (as if its listener had been killed), or forever when `ttl_ms`
    /// is absent (another cluster holding the scale set: a permanent conflict).
    InjectSession {
        /// Scale set id.
        scale_set_id: i64,
        /// Owner name reported in the conflict.
        owner: String,
        /// Remaining lifetime; absent: permanent.
        ttl_ms: Option<u64>,
    },
    /// Drops any session of the scale set.
    ClearSessions {
        /// Scale set id.
        scale_set_id: i64,
    },
    /// Zeroes the counters and the session event list.
    ResetStats,
}

#[derive(Debug)]
struct State_ {
    config: FakeGithubConfig,
    base_url: String,
    started: Instant,
    sessions: SessionBook,
    scale_sets: BTreeMap<i64, ScaleSet>,
    groups: BTreeMap<String, i64>,
    next_scale_set: i64,
    next_agent: i64,
    agents: BTreeMap<i64, (String, i64)>,
    stats: Stats,
}

#[derive(Debug, Clone)]
struct Shared {
    state: Arc<Mutex<State_>>,
    changed: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State_> {
        // A panic while holding the lock would only come from a bug in a
        // handler; keep serving rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state for a tenant call to `endpoint` that carries an admin
    /// token, or the counted 401 answer when it does not.
    fn admin(
        &self,
        headers: &HeaderMap,
        endpoint: &str,
    ) -> Result<MutexGuard<'_, State_>, Box<Response>> {
        let mut st = self.lock();
        if admin_ok(headers) {
            Ok(st)
        } else {
            Err(Box::new(unauthorized(&mut st, endpoint)))
        }
    }
}

impl State_ {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn count(&mut self, endpoint: &str, status: StatusCode) {
        *self.stats.calls.entry(endpoint.to_owned()).or_default() += 1;
        *self
            .stats
            .responses
            .entry(format!("{endpoint} {}", status.as_u16()))
            .or_default() += 1;
    }

    fn session_event(&mut self, op: &str, scale_set_id: i64, owner: &str, status: StatusCode) {
        let at_ms = u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX);
        self.stats.session_events.push(SessionEvent {
            at_ms,
            op: op.to_owned(),
            scale_set_id,
            owner: owner.to_owned(),
            status: status.as_u16(),
        });
    }

    fn session_json(&self, scale_set: i64, s: &Session) -> Value {
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

fn zero_statistics() -> Value {
    json!({
        "totalAvailableJobs": 0, "totalAcquiredJobs": 0, "totalAssignedJobs": 0,
        "totalRunningJobs": 0, "totalRegisteredRunners": 0, "totalBusyRunners": 0,
        "totalIdleRunners": 0,
    })
}

fn scale_set_json(s: &ScaleSet) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "runnerGroupId": s.runner_group_id,
        "runnerGroupName": s.runner_group_name,
        "labels": s.labels,
        "RunnerSetting": {"ephemeral": true, "disableUpdate": true},
        "createdOn": "2026-01-01T00:00:00Z",
        "runnerJitConfigUrl": "",
        "statistics": zero_statistics(),
    })
}

/// Unpadded base64url, for the admin JWT (ARC parses it unverified).
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// An unsigned-looking JWT with a numeric `exp` (`exp` is required: without
/// it both ARC clients dereference a nil expiry).
pub fn admin_jwt(exp_unix: u64) -> String {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64url(
        json!({"exp": exp_unix, "iss": "fake-github", "sub": "arc"})
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{payload}.{}", b64url(b"fake-github-signature"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error_body(type_key: &str, message: &str) -> Value {
    json!({
        "$id": "1",
        "innerException": null,
        "message": message,
        "typeName": format!("GitHub.Actions.Runtime.WebApi.{type_key}, GitHub.Actions.Runtime.WebApi"),
        "typeKey": type_key,
        "errorCode": 0,
        "eventId": 3000,
    })
}

fn reply(status: StatusCode, body: Option<Value>) -> Response {
    let mut resp = match body {
        Some(v) => (status, Json(v)).into_response(),
        None => status.into_response(),
    };
    // ARC logs the ActivityId header of failed calls.
    resp.headers_mut().insert(
        "ActivityId",
        HeaderValue::from_static("00000000-0000-4000-8000-fa4e00000001"),
    );
    resp
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
}

fn unauthorized(st: &mut State_, endpoint: &str) -> Response {
    st.count(endpoint, StatusCode::UNAUTHORIZED);
    reply(StatusCode::UNAUTHORIZED, None)
}

/// Admin-token check for tenant calls: any JWT this fake issued.
fn admin_ok(headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|t| t.split('.').count() == 3)
}

async fn registration_token(State(sh): State<Shared>, headers: HeaderMap) -> Response {
    let mut st = sh.lock();
    if bearer(&headers).is_none() {
        return unauthorized(&mut st, "registration_token");
    }
    st.count("registration_token", StatusCode::CREATED);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    reply(
        StatusCode::CREATED,
        Some(json!({"token": "fake-registration-token", "expires_at": expires.to_string()})),
    )
}

async fn runner_registration(
    State(sh): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = sh.lock();
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let url_ok = parsed
        .as_ref()
        .and_then(|v| v.get("url"))
        .and_then(Value::as_str)
        .is_some_and(|u| !u.is_empty());
    if !auth.starts_with("RemoteAuth ") {
        return unauthorized(&mut st, "runner_registration");
    }
    if !url_ok {
        st.count("runner_registration", StatusCode::BAD_REQUEST);
        return reply(
            StatusCode::BAD_REQUEST,
            Some(json!({"message": "url is required"})),
        );
    }
    st.count("runner_registration", StatusCode::OK);
    let exp = unix_now() + st.config.admin_token_ttl.as_secs();
    let tenant = format!("{}/tenant", st.base_url);
    reply(
        StatusCode::OK,
        Some(json!({"url": tenant, "token": admin_jwt(exp)})),
    )
}

#[derive(Debug, Deserialize)]
struct GroupQuery {
    #[serde(rename = "groupName")]
    group_name: Option<String>,
}

async fn runner_groups(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<GroupQuery>,
) -> Response {
    let mut st = match sh.admin(&headers, "runner_groups") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    st.count("runner_groups", StatusCode::OK);
    let name = q.group_name.unwrap_or_else(|| "Default".to_owned());
    let next = i64::try_from(st.groups.len()).unwrap_or(0) + 1;
    let id = *st.groups.entry(name.clone()).or_insert(next);
    reply(
        StatusCode::OK,
        Some(
            json!({"count": 1, "value": [{"id": id, "name": name, "size": 0, "isDefaultGroup": id == 1}]}),
        ),
    )
}

#[derive(Debug, Deserialize)]
struct ScaleSetQuery {
    name: Option<String>,
    #[serde(rename = "runnerGroupId")]
    runner_group_id: Option<i64>,
}

async fn scale_set_list(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<ScaleSetQuery>,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_list") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    st.count("scale_set_list", StatusCode::OK);
    let found: Vec<Value> = st
        .scale_sets
        .values()
        .filter(|s| q.name.as_deref().is_none_or(|n| n == s.name))
        .filter(|s| q.runner_group_id.is_none_or(|g| g == s.runner_group_id))
        .map(scale_set_json)
        .collect();
    reply(
        StatusCode::OK,
        Some(json!({"count": found.len(), "value": found})),
    )
}

async fn scale_set_create(State(sh): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_create") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        st.count("scale_set_create", StatusCode::BAD_REQUEST);
        return reply(
            StatusCode::BAD_REQUEST,
            Some(error_body("ArgumentException", "invalid JSON body")),
        );
    };
    let Some(name) = v.get("name").and_then(Value::as_str).map(str::to_owned) else {
        st.count("scale_set_create", StatusCode::BAD_REQUEST);
        return reply(
            StatusCode::BAD_REQUEST,
            Some(error_body("ArgumentException", "name is required")),
        );
    };
    let group_id = v.get("runnerGroupId").and_then(Value::as_i64).unwrap_or(1);
    let group_name = st
        .groups
        .iter()
        .find(|(_, id)| **id == group_id)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| "Default".to_owned());
    if st
        .scale_sets
        .values()
        .any(|s| s.name == name && s.runner_group_id == group_id)
    {
        st.count("scale_set_create", StatusCode::CONFLICT);
        return reply(
            StatusCode::CONFLICT,
            Some(error_body(
                "RunnerScaleSetExistsException",
                &format!("The runner scale set {name} already exists."),
            )),
        );
    }
    st.next_scale_set += 1;
    let id = st.next_scale_set;
    let ss = ScaleSet {
        id,
        name,
        runner_group_id: group_id,
        runner_group_name: group_name,
        labels: v.get("labels").cloned().unwrap_or(json!([])),
    };
    let out = scale_set_json(&ss);
    st.scale_sets.insert(id, ss);
    // Exactly 200: both ARC clients reject 201 here.
    st.count("scale_set_create", StatusCode::OK);
    reply(StatusCode::OK, Some(out))
}

async fn scale_set_get(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_get") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    match st.scale_sets.get(&id).map(scale_set_json) {
        Some(v) => {
            st.count("scale_set_get", StatusCode::OK);
            reply(StatusCode::OK, Some(v))
        }
        None => {
            st.count("scale_set_get", StatusCode::NOT_FOUND);
            reply(
                StatusCode::NOT_FOUND,
                Some(error_body(
                    "RunnerScaleSetNotFoundException",
                    "scale set not found",
                )),
            )
        }
    }
}

async fn scale_set_update(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_update") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let group_names: BTreeMap<i64, String> =
        st.groups.iter().map(|(n, id)| (*id, n.clone())).collect();
    let Some(ss) = st.scale_sets.get_mut(&id) else {
        st.count("scale_set_update", StatusCode::NOT_FOUND);
        return reply(
            StatusCode::NOT_FOUND,
            Some(error_body(
                "RunnerScaleSetNotFoundException",
                "scale set not found",
            )),
        );
    };
    if let Some(n) = v.get("name").and_then(Value::as_str) {
        n.clone_into(&mut ss.name);
    }
    if let Some(g) = v
        .get("runnerGroupId")
        .and_then(Value::as_i64)
        .filter(|g| *g > 0)
    {
        ss.runner_group_id = g;
        ss.runner_group_name = group_names
            .get(&g)
            .cloned()
            .unwrap_or_else(|| "Default".to_owned());
    }
    if let Some(l) = v.get("labels") {
        ss.labels = l.clone();
    }
    let out = scale_set_json(ss);
    st.count("scale_set_update", StatusCode::OK);
    reply(StatusCode::OK, Some(out))
}

async fn scale_set_delete(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut st = match sh.admin(&headers, "scale_set_delete") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    st.scale_sets.remove(&id);
    st.sessions.clear(id);
    drop(st);
    sh.changed.notify_waiters();
    let mut st = sh.lock();
    st.count("scale_set_delete", StatusCode::NO_CONTENT);
    reply(StatusCode::NO_CONTENT, None)
}

async fn session_create(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let mut st = match sh.admin(&headers, "session_create") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    let owner = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("ownerName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let Some(name) = st.scale_sets.get(&id).map(|s| s.name.clone()) else {
        st.count("session_create", StatusCode::NOT_FOUND);
        st.session_event("create", id, &owner, StatusCode::NOT_FOUND);
        return reply(
            StatusCode::NOT_FOUND,
            Some(error_body(
                "RunnerScaleSetNotFoundException",
                &format!("No runner scale set found with identifier {id}."),
            )),
        );
    };
    let now = st.now();
    let ttl = Some(st.config.stale_session_ttl);
    match st.sessions.create(id, &owner, ttl, now) {
        Ok(session) => {
            let out = st.session_json(id, &session);
            st.count("session_create", StatusCode::OK);
            st.session_event("create", id, &owner, StatusCode::OK);
            reply(StatusCode::OK, Some(out))
        }
        Err(conflict) => {
            st.count("session_create", StatusCode::CONFLICT);
            st.session_event("create", id, &owner, StatusCode::CONFLICT);
            let msg = format!(
                "The actions runner scaleset {name} already has an active session for owner {}.",
                conflict.owner
            );
            reply(
                StatusCode::CONFLICT,
                Some(error_body("RunnerScaleSetSessionConflictException", &msg)),
            )
        }
    }
}

async fn session_refresh(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path((id, sid)): Path<(i64, String)>,
) -> Response {
    let mut st = match sh.admin(&headers, "session_refresh") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    let now = st.now();
    match st.sessions.refresh(id, &sid, now) {
        Some(s) => {
            let out = st.session_json(id, &s);
            st.count("session_refresh", StatusCode::OK);
            st.session_event("refresh", id, &s.owner, StatusCode::OK);
            reply(StatusCode::OK, Some(out))
        }
        None => {
            st.count("session_refresh", StatusCode::NOT_FOUND);
            st.session_event("refresh", id, "", StatusCode::NOT_FOUND);
            reply(
                StatusCode::NOT_FOUND,
                Some(error_body(
                    "RunnerScaleSetSessionNotFoundException",
                    "session not found",
                )),
            )
        }
    }
}

async fn session_delete(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path((id, sid)): Path<(i64, String)>,
) -> Response {
    let mut st = match sh.admin(&headers, "session_delete") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    let owner = st
        .sessions
        .current(id)
        .filter(|s| s.id == sid)
        .map(|s| s.owner.clone())
        .unwrap_or_default();
    let status = if st.sessions.delete(id, &sid) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    };
    st.count("session_delete", status);
    st.session_event("delete", id, &owner, status);
    drop(st);
    sh.changed.notify_waiters();
    if status == StatusCode::NO_CONTENT {
        reply(status, None)
    } else {
        reply(
            status,
            Some(error_body(
                "RunnerScaleSetSessionNotFoundException",
                "session not found",
            )),
        )
    }
}

/// Decrements the open-poll count of a session when a held poll ends,
/// including when the client goes away mid-poll (the future is dropped).
struct PollGuard {
    sh: Shared,
    token: String,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        let mut st = self.sh.lock();
        let now = st.now();
        st.sessions.touch_by_token(&self.token, -1, now);
    }
}

async fn message_get(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path((id, sid)): Path<(i64, String)>,
) -> Response {
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let hold = {
        let mut st = sh.lock();
        let now = st.now();
        match st.sessions.touch_by_token(&token, 1, now) {
            Some((ss, s)) if ss == id && s == sid => {}
            Some(_) => {
                st.sessions.touch_by_token(&token, -1, now);
                return unauthorized(&mut st, "message_get");
            }
            None => return unauthorized(&mut st, "message_get"),
        }
        st.config.poll_hold
    };
    let guard = PollGuard {
        sh: sh.clone(),
        token,
    };
    let deadline = Instant::now() + hold;
    loop {
        let changed = sh.changed.notified();
        {
            let st = sh.lock();
            let now = st.now();
            if st.sessions.get(id, &sid, now).is_none() {
                drop(st);
                drop(guard);
                let mut st = sh.lock();
                return unauthorized(&mut st, "message_get");
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = changed => {}
        }
    }
    drop(guard);
    let mut st = sh.lock();
    st.count("message_get", StatusCode::ACCEPTED);
    reply(StatusCode::ACCEPTED, None)
}

async fn message_delete(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path((id, sid, _msg)): Path<(i64, String, i64)>,
) -> Response {
    let mut st = sh.lock();
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let now = st.now();
    match st.sessions.touch_by_token(&token, 0, now) {
        Some((ss, s)) if ss == id && s == sid => {
            st.count("message_delete", StatusCode::NO_CONTENT);
            reply(StatusCode::NO_CONTENT, None)
        }
        _ => unauthorized(&mut st, "message_delete"),
    }
}

async fn acquire_jobs(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let mut st = sh.lock();
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let now = st.now();
    if st
        .sessions
        .touch_by_token(&token, 0, now)
        .is_none_or(|(ss, _)| ss != id)
    {
        return unauthorized(&mut st, "acquire_jobs");
    }
    let ids: Vec<i64> = serde_json::from_slice(&body).unwrap_or_default();
    st.count("acquire_jobs", StatusCode::OK);
    reply(
        StatusCode::OK,
        Some(json!({"count": ids.len(), "value": ids})),
    )
}

async fn acquirable_jobs(State(sh): State<Shared>, headers: HeaderMap) -> Response {
    let mut st = match sh.admin(&headers, "acquirable_jobs") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    st.count("acquirable_jobs", StatusCode::OK);
    reply(StatusCode::OK, Some(json!({"count": 0, "value": []})))
}

async fn generate_jit_config(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let mut st = match sh.admin(&headers, "generate_jit_config") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    st.next_agent += 1;
    let agent = st.next_agent;
    st.agents.insert(agent, (name.clone(), id));
    st.count("generate_jit_config", StatusCode::OK);
    let runner = json!({"id": agent, "name": name, "runnerScaleSetId": id});
    reply(
        StatusCode::OK,
        Some(json!({"runner": runner, "encodedJITConfig": b64url(b"{}")})),
    )
}

#[derive(Debug, Deserialize)]
struct AgentQuery {
    #[serde(rename = "agentName")]
    agent_name: Option<String>,
}

async fn agents_get(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<AgentQuery>,
) -> Response {
    let mut st = match sh.admin(&headers, "agents_get") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    let found: Vec<Value> = st
        .agents
        .iter()
        .filter(|(_, (n, _))| q.agent_name.as_deref().is_none_or(|x| x == n))
        .map(|(id, (n, ss))| json!({"id": id, "name": n, "runnerScaleSetId": ss}))
        .collect();
    st.count("agents_get", StatusCode::OK);
    reply(
        StatusCode::OK,
        Some(json!({"count": found.len(), "value": found})),
    )
}

async fn agent_get(State(sh): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let mut st = match sh.admin(&headers, "agent_get") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    match st.agents.get(&id).cloned() {
        Some((n, ss)) => {
            st.count("agent_get", StatusCode::OK);
            reply(
                StatusCode::OK,
                Some(json!({"id": id, "name": n, "runnerScaleSetId": ss})),
            )
        }
        None => {
            st.count("agent_get", StatusCode::NOT_FOUND);
            reply(
                StatusCode::NOT_FOUND,
                Some(error_body("AgentNotFoundException", "agent not found")),
            )
        }
    }
}

async fn agent_delete(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let mut st = match sh.admin(&headers, "agent_delete") {
        Ok(st) => st,
        Err(denied) => return *denied,
    };
    // 204 even for unknown ids, or ARC's runner finalizers never clear.
    st.agents.remove(&id);
    st.count("agent_delete", StatusCode::NO_CONTENT);
    reply(StatusCode::NO_CONTENT, None)
}

async fn fake_stats(State(sh): State<Shared>) -> Json<Stats> {
    let st = sh.lock();
    let mut stats = st.stats.clone();
    stats.now_ms = u64::try_from(st.now().as_millis()).unwrap_or(u64::MAX);
    Json(stats)
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
    apply_control(&sh, control);
    StatusCode::NO_CONTENT.into_response()
}

fn apply_control(sh: &Shared, control: Control) {
    {
        let mut st = sh.lock();
        let now = st.now();
        match control {
            Control::InjectSession {
                scale_set_id,
                owner,
                ttl_ms,
            } => {
                st.sessions.clear(scale_set_id);
                let ttl = ttl_ms.map(Duration::from_millis);
                // The slot was just cleared, so this cannot conflict.
                let _ = st.sessions.create(scale_set_id, &owner, ttl, now);
            }
            Control::ClearSessions { scale_set_id } => st.sessions.clear(scale_set_id),
            Control::ResetStats => st.stats = Stats::default(),
        }
    }
    sh.changed.notify_waiters();
}

fn router(shared: Shared) -> Router {
    let rs = "/tenant/_apis/runtime/runnerscalesets";
    Router::new()
        .route(
            "/api/v3/orgs/{org}/actions/runners/registration-token",
            post(registration_token),
        )
        .route(
            "/api/v3/enterprises/{ent}/actions/runners/registration-token",
            post(registration_token),
        )
        .route(
            "/api/v3/repos/{owner}/{repo}/actions/runners/registration-token",
            post(registration_token),
        )
        .route(
            "/api/v3/actions/runner-registration",
            post(runner_registration),
        )
        .route("/tenant/_apis/runtime/runnergroups/", get(runner_groups))
        .route("/tenant/_apis/runtime/runnergroups", get(runner_groups))
        .route(rs, get(scale_set_list).post(scale_set_create))
        .route(
            &format!("{rs}/{{id}}"),
            get(scale_set_get)
                .patch(scale_set_update)
                .delete(scale_set_delete),
        )
        .route(&format!("{rs}/{{id}}/sessions"), post(session_create))
        .route(
            &format!("{rs}/{{id}}/sessions/{{sid}}"),
            patch(session_refresh).delete(session_delete),
        )
        .route(&format!("{rs}/{{id}}/acquirejobs"), post(acquire_jobs))
        .route(&format!("{rs}/{{id}}/acquirablejobs"), get(acquirable_jobs))
        .route(
            &format!("{rs}/{{id}}/generatejitconfig"),
            post(generate_jit_config),
        )
        .route(
            "/tenant/_apis/distributedtask/pools/0/agents",
            get(agents_get),
        )
        .route(
            "/tenant/_apis/distributedtask/pools/0/agents/{id}",
            get(agent_get).delete(agent_delete),
        )
        .route("/queue/{id}/{sid}", get(message_get))
        .route("/queue/{id}/{sid}/{msg}", delete(message_delete))
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
        let st = self.shared.lock();
        let mut stats = st.stats.clone();
        stats.now_ms = u64::try_from(st.now().as_millis()).unwrap_or(u64::MAX);
        stats
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
        u64::try_from(self.shared.lock().now().as_millis()).unwrap_or(u64::MAX)
    }

    /// Applies a control request (same as `POST /_fake/control`).
    pub fn control(&self, control: Control) {
        apply_control(&self.shared, control);
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

fn new_shared(config: FakeGithubConfig, base_url: String) -> Shared {
    Shared {
        state: Arc::new(Mutex::new(State_ {
            config,
            base_url,
            started: Instant::now(),
            sessions: SessionBook::default(),
            scale_sets: BTreeMap::new(),
            groups: BTreeMap::from([("Default".to_owned(), 1)]),
            next_scale_set: 0,
            next_agent: 0,
            agents: BTreeMap::new(),
            stats: Stats::default(),
        })),
        changed: Arc::new(Notify::new()),
    }
}

/// The service as a router without a socket, for tests.
pub fn test_router(config: FakeGithubConfig, base_url: &str) -> Router {
    router(new_shared(config, base_url.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn session_conflicts_while_stale_session_lives_then_expires() {
        let mut book = SessionBook::default();
        let first = book
            .create(7, "listener-a", Some(30 * S), Duration::ZERO)
            .unwrap();
        // Owner killed: no delete, no polls. A new listener within the TTL conflicts.
        let err = book
            .create(7, "listener-a", Some(30 * S), 29 * S)
            .unwrap_err();
        assert_eq!(err.owner, "listener-a");
        // After the TTL the slot is free again.
        let second = book.create(7, "listener-a", Some(30 * S), 31 * S).unwrap();
        assert_ne!(first.id, second.id);
        assert_ne!(first.queue_token, second.queue_token);
        // Another scale set is independent.
        assert!(book.create(8, "other", Some(30 * S), 31 * S).is_ok());
    }

    #[test]
    fn an_open_poll_keeps_a_session_alive_past_its_ttl() {
        let mut book = SessionBook::default();
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        assert!(book.touch_by_token(&s.queue_token, 1, 5 * S).is_some());
        assert!(
            book.create(1, "b", Some(10 * S), 100 * S).is_err(),
            "poll still open"
        );
        book.touch_by_token(&s.queue_token, -1, 100 * S);
        assert!(
            book.create(1, "b", Some(10 * S), 109 * S).is_err(),
            "within TTL of the last poll"
        );
        assert!(book.create(1, "b", Some(10 * S), 111 * S).is_ok());
    }

    #[test]
    fn delete_frees_the_slot_and_permanent_sessions_never_expire() {
        let mut book = SessionBook::default();
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        assert!(!book.delete(1, "not-the-id"));
        assert!(book.delete(1, &s.id));
        assert!(book.create(1, "b", None, S).is_ok());
        assert!(book.create(1, "c", Some(S), 100_000 * S).is_err());
    }

    #[test]
    fn refresh_rotates_the_token_of_an_active_session_only() {
        let mut book = SessionBook::default();
        let s = book.create(1, "a", Some(10 * S), Duration::ZERO).unwrap();
        let r = book.refresh(1, &s.id, S).unwrap();
        assert_ne!(r.queue_token, s.queue_token);
        assert!(book.touch_by_token(&s.queue_token, 0, S).is_none());
        assert!(book.refresh(1, &s.id, 100 * S).is_none(), "expired");
    }

    #[test]
    fn admin_jwt_has_three_parts_and_a_numeric_exp() {
        let jwt = admin_jwt(1_900_000_000);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(
            parts
                .iter()
                .all(|p| !p.contains('=') && !p.contains('+') && !p.contains('/'))
        );
        assert_eq!(b64url(b"{\"a\":1}"), "eyJhIjoxfQ");
        assert_eq!(b64url(b"ab"), "YWI");
        assert!(jwt.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, v)
    }

    #[tokio::test(start_paused = true)]
    async fn protocol_walk_through_with_a_conflict() {
        let cfg = FakeGithubConfig {
            poll_hold: 2 * S,
            stale_session_ttl: 30 * S,
            admin_token_ttl: 3600 * S,
        };
        let app = test_router(cfg, "http://127.0.0.1:1");
        let (st, v) = call(
            &app,
            "POST",
            "/api/v3/orgs/acme/actions/runners/registration-token",
            Some("Bearer pat"),
            "",
        )
        .await;
        assert_eq!(st, StatusCode::CREATED);
        let reg = v["token"].as_str().unwrap().to_owned();
        let (st, _) = call(
            &app,
            "POST",
            "/api/v3/actions/runner-registration",
            Some("Bearer x"),
            "{}",
        )
        .await;
        assert_eq!(
            st,
            StatusCode::UNAUTHORIZED,
            "registration needs RemoteAuth"
        );
        let (st, v) = call(
            &app,
            "POST",
            "/api/v3/actions/runner-registration",
            Some(&format!("RemoteAuth {reg}")),
            r#"{"url":"http://127.0.0.1:1/acme","runner_event":"register"}"#,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(v["url"], "http://127.0.0.1:1/tenant", "no trailing slash");
        let admin = format!("Bearer {}", v["token"].as_str().unwrap());

        let (st, _) = call(
            &app,
            "GET",
            "/tenant/_apis/runtime/runnerscalesets?name=x&runnerGroupId=1",
            None,
            "",
        )
        .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, v) = call(
            &app,
            "GET",
            "/tenant/_apis/runtime/runnerscalesets?name=x&runnerGroupId=1&api-version=6.0-preview",
            Some(&admin),
            "",
        )
        .await;
        assert_eq!((st, v["count"].as_i64()), (StatusCode::OK, Some(0)));
        let (st, v) = call(
            &app,
            "POST",
            "/tenant/_apis/runtime/runnerscalesets",
            Some(&admin),
            r#"{"name":"x","runnerGroupId":1}"#,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "create is exactly 200");
        let id = v["id"].as_i64().unwrap();
        assert!(id > 0);
        assert_eq!(v["runnerGroupName"], "Default");
        let (_, v) = call(
            &app,
            "GET",
            "/tenant/_apis/runtime/runnerscalesets?name=x&runnerGroupId=1",
            Some(&admin),
            "",
        )
        .await;
        assert_eq!(v["count"], 1);

        let sessions = format!("/tenant/_apis/runtime/runnerscalesets/{id}/sessions");
        let (st, s1) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod-a"}"#,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "session create is exactly 200");
        assert_eq!(s1["runnerScaleSet"]["id"], id);
        assert!(s1["statistics"].is_object());
        let (st, conflict) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod-b"}"#,
        )
        .await;
        assert_eq!(st, StatusCode::CONFLICT);
        assert_eq!(conflict["typeName"], SESSION_CONFLICT_TYPE);
        assert!(
            conflict["message"]
                .as_str()
                .unwrap()
                .contains("already has an active session")
        );

        // Poll: held, then 202.
        let queue = s1["messageQueueUrl"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://127.0.0.1:1")
            .to_owned();
        let qtoken = format!("Bearer {}", s1["messageQueueAccessToken"].as_str().unwrap());
        let t0 = Instant::now();
        let (st, _) = call(&app, "GET", &queue, Some(&qtoken), "").await;
        assert_eq!(st, StatusCode::ACCEPTED);
        assert!(Instant::now() - t0 >= 2 * S, "poll was held");
        let (st, _) = call(&app, "GET", &queue, Some("Bearer wrong"), "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, _) = call(&app, "DELETE", &format!("{queue}/5"), Some(&qtoken), "").await;
        assert_eq!(st, StatusCode::NO_CONTENT);

        // Graceful exit deletes the session: the next owner gets one at once.
        let sid = s1["sessionId"].as_str().unwrap();
        let (st, _) = call(
            &app,
            "DELETE",
            &format!("{sessions}/{sid}"),
            Some(&admin),
            "",
        )
        .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod-b"}"#,
        )
        .await;
        assert_eq!(st, StatusCode::OK);

        // Removal endpoints answer exactly 204, unknown ids included.
        let (st, _) = call(
            &app,
            "DELETE",
            "/tenant/_apis/distributedtask/pools/0/agents/999",
            Some(&admin),
            "",
        )
        .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _) = call(
            &app,
            "DELETE",
            &format!("/tenant/_apis/runtime/runnerscalesets/{id}"),
            Some(&admin),
            "",
        )
        .await;
        assert_eq!(st, StatusCode::NO_CONTENT);

        let (_, stats) = call(&app, "GET", "/_fake/stats", None, "").await;
        let stats: Stats = serde_json::from_value(stats).unwrap();
        assert_eq!(stats.calls("session_create"), 3);
        assert_eq!(stats.responses("session_create", 409), 1);
        assert_eq!(stats.responses("session_create", 200), 2);
        assert_eq!(stats.calls("message_get"), 2);
        let ops: Vec<(&str, u16)> = stats
            .session_events
            .iter()
            .map(|e| (e.op.as_str(), e.status))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("create", 200),
                ("create", 409),
                ("delete", 204),
                ("create", 200)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn control_injects_a_stale_session_that_expires() {
        let cfg = FakeGithubConfig {
            poll_hold: S,
            stale_session_ttl: 30 * S,
            admin_token_ttl: 3600 * S,
        };
        let app = test_router(cfg, "http://127.0.0.1:1");
        let admin = format!("Bearer {}", admin_jwt(1_900_000_000));
        let (_, v) = call(
            &app,
            "POST",
            "/tenant/_apis/runtime/runnerscalesets",
            Some(&admin),
            r#"{"name":"x"}"#,
        )
        .await;
        let id = v["id"].as_i64().unwrap();
        let body = format!(
            r#"{{"action":"inject_session","scale_set_id":{id},"owner":"ghost","ttl_ms":5000}}"#
        );
        let (st, _) = call(&app, "POST", "/_fake/control", None, &body).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let sessions = format!("/tenant/_apis/runtime/runnerscalesets/{id}/sessions");
        let (st, v) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod"}"#,
        )
        .await;
        assert_eq!(st, StatusCode::CONFLICT);
        assert!(v["message"].as_str().unwrap().contains("ghost"));
        tokio::time::advance(6 * S).await;
        let (st, _) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod"}"#,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = call(
            &app,
            "POST",
            "/_fake/control",
            None,
            r#"{"action":"nonsense"}"#,
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_poll_leaves_the_session_stale_for_the_ttl() {
        let cfg = FakeGithubConfig {
            poll_hold: 60 * S,
            stale_session_ttl: 10 * S,
            admin_token_ttl: 3600 * S,
        };
        let shared = new_shared(cfg, "http://127.0.0.1:1".to_owned());
        let app = router(shared.clone());
        let admin = format!("Bearer {}", admin_jwt(1_900_000_000));
        let (_, v) = call(
            &app,
            "POST",
            "/tenant/_apis/runtime/runnerscalesets",
            Some(&admin),
            r#"{"name":"x"}"#,
        )
        .await;
        let id = v["id"].as_i64().unwrap();
        let sessions = format!("/tenant/_apis/runtime/runnerscalesets/{id}/sessions");
        let (_, s) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod"}"#,
        )
        .await;
        let queue = s["messageQueueUrl"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://127.0.0.1:1")
            .to_owned();
        let qtoken = format!("Bearer {}", s["messageQueueAccessToken"].as_str().unwrap());
        // The listener is killed while its poll is held: the request future is dropped.
        let app2 = app.clone();
        let poll = tokio::spawn(async move { call(&app2, "GET", &queue, Some(&qtoken), "").await });
        // Wait until the poll is really held open.
        while shared
            .lock()
            .sessions
            .current(id)
            .is_none_or(|s| s.open_polls == 0)
        {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(20 * S).await;
        let (st, _) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod"}"#,
        )
        .await;
        assert_eq!(
            st,
            StatusCode::CONFLICT,
            "an open poll keeps the session active"
        );
        poll.abort();
        let _ = poll.await;
        tokio::time::advance(9 * S).await;
        let (st, _) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod"}"#,
        )
        .await;
        assert_eq!(
            st,
            StatusCode::CONFLICT,
            "stale for the TTL after the owner vanished"
        );
        tokio::time::advance(2 * S).await;
        let (st, _) = call(
            &app,
            "POST",
            &sessions,
            Some(&admin),
            r#"{"ownerName":"pod"}"#,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
}
