//! The listener's endpoints: message sessions (create, refresh, delete) on
//! the tenant, and the message queue (long poll, delete, acquire jobs) with
//! the session's queue token.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tokio::time::Instant;

use super::sessions::TokenCheck;
use super::state::Shared;
use super::wire::{SESSION_UNKNOWN_MESSAGE, bearer, error_body, reply};

/// `POST .../runnerscalesets/{id}/sessions`: exactly 200, or the 409
/// `RunnerScaleSetSessionConflictException` while another session is
/// active, or 404 `RunnerScaleSetNotFoundException` for a scale set GitHub
/// does not know.
pub(super) async fn session_create(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let mut st = match sh.admin(&headers, "session_create") {
        Ok(st) => st,
        Err(early) => return *early,
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

/// `PATCH .../sessions/{sid}`: the session with a new queue token, or 404
/// for a session the service does not know (gone, expired, or evicted by
/// [`super::Control::FailRefresh`]).
pub(super) async fn session_refresh(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path((id, sid)): Path<(i64, String)>,
) -> Response {
    let mut st = match sh.admin(&headers, "session_refresh") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    let now = st.now();
    let injected = st.take_refresh_failure();
    if injected && st.sessions.current(id).is_some_and(|s| s.id == sid) {
        // The broker evicted the session: it is gone for every later call.
        st.sessions.clear(id);
    }
    let refreshed = if injected {
        None
    } else {
        st.sessions.refresh(id, &sid, now)
    };
    match refreshed {
        Some(s) => {
            let out = st.session_json(id, &s);
            st.count("session_refresh", StatusCode::OK);
            st.session_event("refresh", id, &s.owner, StatusCode::OK);
            reply(StatusCode::OK, Some(out))
        }
        None => {
            if injected {
                st.count_injected("session_refresh", StatusCode::NOT_FOUND);
            } else {
                st.count("session_refresh", StatusCode::NOT_FOUND);
            }
            st.session_event("refresh", id, "", StatusCode::NOT_FOUND);
            drop(st);
            sh.changed.notify_waiters();
            reply(
                StatusCode::NOT_FOUND,
                Some(error_body("RunnerAdminException", SESSION_UNKNOWN_MESSAGE)),
            )
        }
    }
}

/// `DELETE .../sessions/{sid}`: exactly 204 for an active session; 400
/// `RunnerScaleSetSessionExpiredException` for one that expired or is
/// unknown, as GitHub answers (actions/actions-runner-controller#4285).
pub(super) async fn session_delete(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path((id, sid)): Path<(i64, String)>,
) -> Response {
    let mut st = match sh.admin(&headers, "session_delete") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    let owner = st
        .sessions
        .current(id)
        .filter(|s| s.id == sid)
        .map(|s| s.owner.clone())
        .unwrap_or_default();
    let now = st.now();
    let status = if st.sessions.delete(id, &sid, now) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::BAD_REQUEST
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
                "RunnerScaleSetSessionExpiredException",
                &format!("The session identifier {sid} is not valid."),
            )),
        )
    }
}

/// Records the end of a held poll, including when the client goes away
/// mid-poll (the future is dropped).
struct PollGuard {
    sh: Shared,
    scale_set: i64,
    session_id: String,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        let mut st = self.sh.lock();
        let now = st.now();
        st.sessions.touch(self.scale_set, &self.session_id, -1, now);
    }
}

/// Whether `token` is the valid queue token of session `sid` of scale set
/// `id`, as seen at `now`.
fn token_for(check: &TokenCheck, id: i64, sid: &str) -> bool {
    matches!(check, TokenCheck::Valid { scale_set, session_id } if *scale_set == id && session_id == sid)
}

/// `GET /queue/{id}/{sid}`: held for `poll_hold`, then 202 (no message).
/// 401 for a token that expired or is not the session's: the clients
/// refresh the session then.
pub(super) async fn message_get(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path((id, sid)): Path<(i64, String)>,
) -> Response {
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let hold = {
        let mut st = match sh.enter("message_get") {
            Ok(st) => st,
            Err(early) => return *early,
        };
        let now = st.now();
        if !token_for(&st.sessions.check_token(&token, now), id, &sid) {
            return st.unauthorized("message_get");
        }
        st.sessions.touch(id, &sid, 1, now);
        st.config.poll_hold
    };
    let guard = PollGuard {
        sh: sh.clone(),
        scale_set: id,
        session_id: sid.clone(),
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
                return sh.lock().unauthorized("message_get");
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

/// `DELETE /queue/{id}/{sid}/{message}`: exactly 204 with a valid token.
pub(super) async fn message_delete(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path((id, sid, _msg)): Path<(i64, String, i64)>,
) -> Response {
    let mut st = match sh.enter("message_delete") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let now = st.now();
    if !token_for(&st.sessions.check_token(&token, now), id, &sid) {
        return st.unauthorized("message_delete");
    }
    st.sessions.touch(id, &sid, 0, now);
    st.count("message_delete", StatusCode::NO_CONTENT);
    reply(StatusCode::NO_CONTENT, None)
}

/// `POST .../runnerscalesets/{id}/acquirejobs` with the queue token: the ids
/// acquired (all of them).
pub(super) async fn acquire_jobs(
    State(sh): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let mut st = match sh.enter("acquire_jobs") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let now = st.now();
    let TokenCheck::Valid {
        scale_set,
        session_id,
    } = st.sessions.check_token(&token, now)
    else {
        return st.unauthorized("acquire_jobs");
    };
    if scale_set != id {
        return st.unauthorized("acquire_jobs");
    }
    st.sessions.touch(id, &session_id, 0, now);
    let ids: Vec<i64> = serde_json::from_slice(&body).unwrap_or_default();
    st.count("acquire_jobs", StatusCode::OK);
    reply(
        StatusCode::OK,
        Some(serde_json::json!({"count": ids.len(), "value": ids})),
    )
}
