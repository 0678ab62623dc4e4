//! The token bootstrap on GitHub's REST API: a registration token for the
//! PAT, then the Actions tenant URL and admin JWT for it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::state::Shared;
use super::wire::{admin_jwt, bearer, reply, unix_now};

/// `POST /api/v3/{orgs/O|enterprises/E|repos/O/R}/actions/runners/registration-token`:
/// exactly 201 (both clients reject anything else).
pub(super) async fn registration_token(State(sh): State<Shared>, headers: HeaderMap) -> Response {
    let mut st = match sh.enter("registration_token") {
        Ok(st) => st,
        Err(early) => return *early,
    };
    if bearer(&headers).is_none() {
        return st.unauthorized("registration_token");
    }
    st.count("registration_token", StatusCode::CREATED);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    reply(
        StatusCode::CREATED,
        Some(json!({"token": "fake-registration-token", "expires_at": expires.to_string()})),
    )
}

/// `POST /api/v3/actions/runner-registration` with `RemoteAuth <registration
/// token>`: the tenant URL (no trailing slash) and an admin JWT.
pub(super) async fn runner_registration(
    State(sh): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = match sh.enter("runner_registration") {
        Ok(st) => st,
        Err(early) => return *early,
    };
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
        return st.unauthorized("runner_registration");
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
