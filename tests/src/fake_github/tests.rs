//! The service through its router, as ARC's clients call it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::state::new_shared;
use super::*;

pub(super) const S: Duration = Duration::from_secs(1);

pub(super) async fn call(
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

/// Registers scale set `x` with the admin token; returns its id.
pub(super) async fn register_scale_set(app: &Router, admin: &str) -> i64 {
    let (st, v) = call(
        app,
        "POST",
        "/tenant/_apis/runtime/runnerscalesets",
        Some(admin),
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["id"].as_i64().unwrap()
}

/// `POST` a session for `owner` to `sessions` with the admin token.
pub(super) async fn create_session(
    app: &Router,
    sessions: &str,
    admin: &str,
    owner: &str,
) -> (StatusCode, Value) {
    let body = serde_json::json!({ "ownerName": owner }).to_string();
    call(app, "POST", sessions, Some(admin), &body).await
}

#[tokio::test(start_paused = true)]
async fn protocol_walk_through_with_a_conflict() {
    let cfg = FakeGithubConfig {
        poll_hold: 2 * S,
        stale_session_ttl: 30 * S,
        ..FakeGithubConfig::default()
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
    let (st, s1) = create_session(&app, &sessions, &admin, "pod-a").await;
    assert_eq!(st, StatusCode::OK, "session create is exactly 200");
    assert_eq!(s1["runnerScaleSet"]["id"], id);
    assert!(s1["statistics"].is_object());
    let (st, conflict) = create_session(&app, &sessions, &admin, "pod-b").await;
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
    let (st, _) = create_session(&app, &sessions, &admin, "pod-b").await;
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
        ..FakeGithubConfig::default()
    };
    let app = test_router(cfg, "http://127.0.0.1:1");
    let admin = format!("Bearer {}", admin_jwt(1_900_000_000));
    let id = register_scale_set(&app, &admin).await;
    let body = format!(
        r#"{{"action":"inject_session","scale_set_id":{id},"owner":"ghost","ttl_ms":5000}}"#
    );
    let (st, _) = call(&app, "POST", "/_fake/control", None, &body).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let sessions = format!("/tenant/_apis/runtime/runnerscalesets/{id}/sessions");
    let (st, v) = create_session(&app, &sessions, &admin, "pod").await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(v["message"].as_str().unwrap().contains("ghost"));
    tokio::time::advance(6 * S).await;
    let (st, _) = create_session(&app, &sessions, &admin, "pod").await;
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
        ..FakeGithubConfig::default()
    };
    let shared = new_shared(cfg, "http://127.0.0.1:1".to_owned());
    let app = router(shared.clone());
    let admin = format!("Bearer {}", admin_jwt(1_900_000_000));
    let id = register_scale_set(&app, &admin).await;
    let sessions = format!("/tenant/_apis/runtime/runnerscalesets/{id}/sessions");
    let (_, s) = create_session(&app, &sessions, &admin, "pod").await;
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
    let (st, _) = create_session(&app, &sessions, &admin, "pod").await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "an open poll keeps the session active"
    );
    poll.abort();
    let _ = poll.await;
    tokio::time::advance(9 * S).await;
    let (st, _) = create_session(&app, &sessions, &admin, "pod").await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "stale for the TTL after the owner vanished"
    );
    tokio::time::advance(2 * S).await;
    let (st, _) = create_session(&app, &sessions, &admin, "pod").await;
    assert_eq!(st, StatusCode::OK);
}
