//! Session expiry and the injected failures, through the router.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::http::StatusCode;
use serde_json::Value;

use super::state::new_shared;
use super::tests::{S, call, register_scale_set};
use super::*;

/// A router with one scale set registered; returns it, the admin
/// `Authorization` value and the scale set id.
async fn with_scale_set(cfg: FakeGithubConfig) -> (Router, String, i64) {
    let app = test_router(cfg, "http://127.0.0.1:1");
    let admin = format!("Bearer {}", admin_jwt(1_900_000_000));
    let id = register_scale_set(&app, &admin).await;
    (app, admin, id)
}

/// A listener's session: its id, queue path and queue `Authorization`.
struct Listener {
    sid: String,
    queue: String,
    token: String,
}

fn listener_of(session: &Value) -> Listener {
    Listener {
        sid: session["sessionId"].as_str().unwrap().to_owned(),
        queue: session["messageQueueUrl"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://127.0.0.1:1")
            .to_owned(),
        token: format!(
            "Bearer {}",
            session["messageQueueAccessToken"].as_str().unwrap()
        ),
    }
}

async fn create_session(app: &Router, admin: &str, id: i64) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        &format!("/tenant/_apis/runtime/runnerscalesets/{id}/sessions"),
        Some(admin),
        r#"{"ownerName":"pod"}"#,
    )
    .await
}

async fn session_call(
    app: &Router,
    method: &str,
    admin: &str,
    id: i64,
    sid: &str,
) -> (StatusCode, Value) {
    call(
        app,
        method,
        &format!("/tenant/_apis/runtime/runnerscalesets/{id}/sessions/{sid}"),
        Some(admin),
        "",
    )
    .await
}

async fn control(app: &Router, body: &str) -> StatusCode {
    call(app, "POST", "/_fake/control", None, body).await.0
}

async fn stats(app: &Router) -> Stats {
    let (_, v) = call(app, "GET", "/_fake/stats", None, "").await;
    serde_json::from_value(v).unwrap()
}

fn short_hold() -> FakeGithubConfig {
    FakeGithubConfig {
        poll_hold: S,
        stale_session_ttl: 30 * S,
        ..FakeGithubConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn deleting_a_session_that_is_gone_answers_400_session_expired() {
    let (app, admin, id) = with_scale_set(short_hold()).await;
    let (_, s) = create_session(&app, &admin, id).await;
    let l = listener_of(&s);
    // Never polled: stale after its TTL.
    tokio::time::advance(31 * S).await;
    let (st, v) = session_call(&app, "DELETE", &admin, id, &l.sid).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["typeName"], SESSION_EXPIRED_TYPE);
    assert_eq!(
        v["message"],
        format!("The session identifier {} is not valid.", l.sid)
    );
    // Unknown ids too.
    let (st, v) = session_call(&app, "DELETE", &admin, id, "no-such-session").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["typeName"], SESSION_EXPIRED_TYPE);
    // A live session still deletes with exactly 204.
    let (_, s) = create_session(&app, &admin, id).await;
    let (st, _) = session_call(&app, "DELETE", &admin, id, &listener_of(&s).sid).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let stats = stats(&app).await;
    assert_eq!(stats.responses("session_delete", 400), 2);
    assert_eq!(stats.responses("session_delete", 204), 1);
    assert_eq!(stats.session_ops("delete", 400), 2);
    assert!(stats.injected.is_empty(), "the service's own answers");
}

#[tokio::test(start_paused = true)]
async fn an_expired_queue_token_gets_401_until_the_session_is_refreshed() {
    let cfg = FakeGithubConfig {
        queue_token_ttl: 20 * S,
        ..short_hold()
    };
    let (app, admin, id) = with_scale_set(cfg).await;
    let (_, s) = create_session(&app, &admin, id).await;
    let l = listener_of(&s);
    // Polls (each held 1 s) keep the session alive: 10 s.
    for _ in 0..5 {
        let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
        assert_eq!(st, StatusCode::ACCEPTED);
        tokio::time::advance(S).await;
    }
    tokio::time::advance(8 * S).await;
    let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
    assert_eq!(st, StatusCode::ACCEPTED, "token still valid at 18 s");
    tokio::time::advance(S).await;
    let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "token expired at 20 s");
    let (st, _) = call(
        &app,
        "DELETE",
        &format!("{}/1", l.queue),
        Some(&l.token),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The listener refreshes: same session, new token, polls again.
    let (st, r) = session_call(&app, "PATCH", &admin, id, &l.sid).await;
    assert_eq!(st, StatusCode::OK);
    let fresh = listener_of(&r);
    assert_eq!(fresh.sid, l.sid);
    assert_ne!(fresh.token, l.token);
    let (st, _) = call(&app, "GET", &fresh.queue, Some(&fresh.token), "").await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "the old token is gone");
    let stats = stats(&app).await;
    assert_eq!(stats.responses("message_get", 401), 2);
    assert_eq!(stats.responses("session_refresh", 200), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_forgets_the_session() {
    let (app, admin, id) = with_scale_set(short_hold()).await;
    let (_, s) = create_session(&app, &admin, id).await;
    let l = listener_of(&s);
    assert_eq!(
        control(&app, r#"{"action":"fail_refresh","count":1}"#).await,
        StatusCode::NO_CONTENT
    );
    let (st, v) = session_call(&app, "PATCH", &admin, id, &l.sid).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["typeName"], SESSION_UNKNOWN_TYPE);
    assert!(v["message"].as_str().unwrap().contains("doesn't exist"));
    // The listener exits and deletes its session on the way out: gone.
    let (st, v) = session_call(&app, "DELETE", &admin, id, &l.sid).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["typeName"], SESSION_EXPIRED_TYPE);
    let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The next listener gets a session at once, and its refresh works
    // (the failure was counted to one call).
    let (st, s) = create_session(&app, &admin, id).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = session_call(&app, "PATCH", &admin, id, &listener_of(&s).sid).await;
    assert_eq!(st, StatusCode::OK);
    let stats = stats(&app).await;
    assert_eq!(stats.injected("session_refresh", 404), 1);
    assert_eq!(stats.responses("session_refresh", 404), 1);
    assert_eq!(stats.responses("session_refresh", 200), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_fail_until_the_faults_are_cleared() {
    let (app, admin, id) = with_scale_set(short_hold()).await;
    assert_eq!(
        control(&app, r#"{"action":"fail_refresh"}"#).await,
        StatusCode::NO_CONTENT
    );
    for _ in 0..3 {
        let (_, s) = create_session(&app, &admin, id).await;
        let (st, _) = session_call(&app, "PATCH", &admin, id, &listener_of(&s).sid).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }
    assert_eq!(
        control(&app, r#"{"action":"clear_faults"}"#).await,
        StatusCode::NO_CONTENT
    );
    let (_, s) = create_session(&app, &admin, id).await;
    let (st, _) = session_call(&app, "PATCH", &admin, id, &listener_of(&s).sid).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(stats(&app).await.injected("session_refresh", 404), 3);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_fails_with_the_injected_status_for_its_count() {
    let (app, admin, id) = with_scale_set(short_hold()).await;
    let body = r#"{"action":"fail_endpoint","endpoint":"session_create","status":503,"count":2}"#;
    assert_eq!(control(&app, body).await, StatusCode::NO_CONTENT);
    for _ in 0..2 {
        let (st, v) = create_session(&app, &admin, id).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert!(v["message"].as_str().unwrap().contains("503"));
    }
    let (st, s) = create_session(&app, &admin, id).await;
    assert_eq!(st, StatusCode::OK, "count spent");
    // A 500 on every poll until cleared.
    let l = listener_of(&s);
    let body = r#"{"action":"fail_endpoint","endpoint":"message_get","status":500}"#;
    assert_eq!(control(&app, body).await, StatusCode::NO_CONTENT);
    for _ in 0..3 {
        let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
        assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(
        control(&app, r#"{"action":"clear_faults"}"#).await,
        StatusCode::NO_CONTENT
    );
    let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let stats = stats(&app).await;
    assert_eq!(stats.responses("session_create", 503), 2);
    assert_eq!(stats.injected("session_create", 503), 2);
    assert_eq!(stats.calls("session_create"), 3);
    assert_eq!(stats.injected("message_get", 500), 3);
    assert_eq!(stats.responses("message_get", 202), 1);
    // Invalid requests change nothing and say why.
    let (st, v) = call(
        &app,
        "POST",
        "/_fake/control",
        None,
        r#"{"action":"fail_endpoint","endpoint":"sessions","status":503}"#,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(v.as_str().unwrap().contains("unknown endpoint"), "{v}");
    let body = r#"{"action":"fail_endpoint","endpoint":"message_get","status":999}"#;
    assert_eq!(control(&app, body).await, StatusCode::BAD_REQUEST);
    let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
    assert_eq!(st, StatusCode::ACCEPTED);
}

#[tokio::test(start_paused = true)]
async fn an_empty_poll_body_is_a_200_without_content() {
    let (app, admin, id) = with_scale_set(short_hold()).await;
    let (_, s) = create_session(&app, &admin, id).await;
    let l = listener_of(&s);
    let body = r#"{"action":"empty_message_body","count":1}"#;
    assert_eq!(control(&app, body).await, StatusCode::NO_CONTENT);
    let (st, v) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
    assert_eq!((st, v), (StatusCode::OK, Value::Null), "200, empty body");
    let (st, _) = call(&app, "GET", &l.queue, Some(&l.token), "").await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert_eq!(stats(&app).await.injected("message_get", 200), 1);
}

#[tokio::test(start_paused = true)]
async fn a_revoked_token_fails_the_bootstrap_with_401() {
    let app = test_router(short_hold(), "http://127.0.0.1:1");
    let token_path = "/api/v3/orgs/acme/actions/runners/registration-token";
    assert_eq!(
        control(&app, r#"{"action":"revoke_token"}"#).await,
        StatusCode::NO_CONTENT
    );
    let (st, v) = call(&app, "POST", token_path, Some("Bearer pat"), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["message"], "Bad credentials");
    // The registration token rejected instead.
    let body = r#"{"action":"revoke_token","endpoint":"runner_registration"}"#;
    assert_eq!(
        control(&app, r#"{"action":"clear_faults"}"#).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(control(&app, body).await, StatusCode::NO_CONTENT);
    let (st, _) = call(&app, "POST", token_path, Some("Bearer pat"), "").await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = call(
        &app,
        "POST",
        "/api/v3/actions/runner-registration",
        Some("RemoteAuth fake-registration-token"),
        r#"{"url":"http://127.0.0.1:1/acme","runner_event":"register"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(v["message"], "Bad credentials");
    let stats = stats(&app).await;
    assert_eq!(stats.injected("registration_token", 401), 1);
    assert_eq!(stats.injected("runner_registration", 401), 1);
    assert_eq!(stats.responses("registration_token", 201), 1);
}

#[tokio::test(start_paused = true)]
async fn a_scale_set_deleted_on_githubs_side_is_not_found() {
    let cfg = FakeGithubConfig {
        poll_hold: 60 * S,
        ..short_hold()
    };
    let shared = new_shared(cfg, "http://127.0.0.1:1".to_owned());
    let app = router(shared.clone());
    let admin = format!("Bearer {}", admin_jwt(1_900_000_000));
    let id = register_scale_set(&app, &admin).await;
    let (_, s) = create_session(&app, &admin, id).await;
    let l = listener_of(&s);
    // A poll held while the scale set goes away ends at once.
    let app2 = app.clone();
    let (queue, token) = (l.queue.clone(), l.token.clone());
    let poll = tokio::spawn(async move { call(&app2, "GET", &queue, Some(&token), "").await });
    while shared
        .lock()
        .sessions
        .current(id)
        .is_none_or(|s| s.open_polls == 0)
    {
        tokio::task::yield_now().await;
    }
    let body = format!(r#"{{"action":"delete_scale_set","scale_set_id":{id}}}"#);
    assert_eq!(control(&app, &body).await, StatusCode::NO_CONTENT);
    let (st, _) = poll.await.unwrap();
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = create_session(&app, &admin, id).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["typeName"], SCALE_SET_NOT_FOUND_TYPE);
    let (st, _) = call(
        &app,
        "GET",
        &format!("/tenant/_apis/runtime/runnerscalesets/{id}"),
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Not a fault: clearing faults does not bring it back.
    assert_eq!(
        control(&app, r#"{"action":"clear_faults"}"#).await,
        StatusCode::NO_CONTENT
    );
    let (st, _) = create_session(&app, &admin, id).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(stats(&app).await.session_ops("create", 404), 2);
}

#[tokio::test(start_paused = true)]
async fn a_removed_runner_group_is_not_found_by_name() {
    let app = test_router(short_hold(), "http://127.0.0.1:1");
    let admin = format!("Bearer {}", admin_jwt(1_900_000_000));
    let lookup = "/tenant/_apis/runtime/runnergroups/?groupName=ci&api-version=6.0-preview";
    let (_, v) = call(&app, "GET", lookup, Some(&admin), "").await;
    assert_eq!(v["count"], 1);
    let id = v["value"][0]["id"].as_i64().unwrap();
    let body = r#"{"action":"remove_runner_group","name":"ci"}"#;
    assert_eq!(control(&app, body).await, StatusCode::NO_CONTENT);
    let (st, v) = call(&app, "GET", lookup, Some(&admin), "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["count"], 0);
    assert_eq!(v["value"], serde_json::json!([]));
    // Other groups are untouched and ids are not reused.
    let (_, v) = call(
        &app,
        "GET",
        "/tenant/_apis/runtime/runnergroups/?groupName=other",
        Some(&admin),
        "",
    )
    .await;
    assert_eq!(v["count"], 1);
    assert_ne!(v["value"][0]["id"].as_i64().unwrap(), id);
    assert_eq!(
        control(&app, r#"{"action":"clear_faults"}"#).await,
        StatusCode::NO_CONTENT
    );
    let (_, v) = call(&app, "GET", lookup, Some(&admin), "").await;
    assert_eq!(v["count"], 1);
}
