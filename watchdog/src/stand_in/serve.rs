//! The stand-in's HTTP side: one handler routing by method and path, the
//! pod watch, and the log streams.

use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Ctx, NS, POD, Seen};
use crate::run::lease::ANNOTATION_HISTORY;

pub(super) async fn serve(listener: tokio::net::TcpListener, ctx: Ctx) {
    let app = Router::new().fallback(handle).with_state(ctx);
    let _ = axum::serve(listener, app).await;
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": message, "reason": reason, "code": code,
    });
    json_response(code, &body)
}

fn json_response(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn stream_response(content_type: &'static str, rx: mpsc::Receiver<Bytes>) -> Response {
    let s = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [("content-type", content_type)],
        Body::from_stream(s),
    )
        .into_response()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(ctx): State<Ctx>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let body_json: Option<Value> = serde_json::from_slice(&body).ok();
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let pod_path = format!("{pods}/{POD}");
    let lease_path =
        format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/arc-watchdog.{POD}");
    let events_path = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");

    let fail = {
        let mut s = ctx.lock();
        s.requests.push(Seen {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            body: body_json.clone(),
        });
        s.fail_all
    };
    ctx.bump();
    if let Some(code) = fail {
        return status(code, "Forbidden", "stand-in: every request fails");
    }
    let dry_run = query_param(&query, "dryRun").is_some();

    match (method.as_str(), path.as_str()) {
        ("GET", p) if p == pods => {
            if query_param(&query, "watch").as_deref() == Some("true") {
                let fail = {
                    let mut s = ctx.lock();
                    let fail = s.pod_watch_fail > 0;
                    s.pod_watch_fail = s.pod_watch_fail.saturating_sub(1);
                    fail
                };
                if fail {
                    return status(500, "InternalError", "stand-in: pod watch refused");
                }
                watch_pod(ctx)
            } else {
                let s = ctx.lock();
                let items: Vec<Value> = s.pod.iter().cloned().collect();
                json_response(
                    200,
                    &json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": s.pod_rv.to_string()}, "items": items}),
                )
            }
        }
        ("GET", p) if p == pod_path => match ctx.lock().pod.clone() {
            Some(pod) => json_response(200, &pod),
            None => status(404, "NotFound", "pods not found"),
        },
        ("GET", p) if p == format!("{pod_path}/log") => log_stream(ctx, &query),
        ("POST", p) if p == format!("{pod_path}/eviction") => {
            let mut changed = ctx.changed.subscribe();
            while ctx.lock().evict_hold {
                if changed.changed().await.is_err() {
                    return status(503, "ServiceUnavailable", "stand-in stopped");
                }
            }
            let mut s = ctx.lock();
            if let Some(code) = s.evict_fail {
                return status(code, "InternalError", "stand-in: the eviction fails");
            }
            if s.evict_429 > 0 {
                s.evict_429 -= 1;
                return status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
            }
            if !dry_run {
                s.evictions.push(body_json.unwrap_or(Value::Null));
            }
            status(201, "", "")
        }
        ("GET", p) if p == lease_path => {
            let s = ctx.lock();
            if let Some(code) = s.lease_get_fail {
                return status(
                    code,
                    "ServiceUnavailable",
                    "stand-in: reading the Lease fails",
                );
            }
            match s.lease.clone() {
                Some(l) => json_response(200, &l),
                None => status(404, "NotFound", "leases not found"),
            }
        }
        ("PUT", p) if p == lease_path => {
            let mut s = ctx.lock();
            let Some(current) = s.lease.clone() else {
                return status(404, "NotFound", "leases not found");
            };
            if s.lease_races > 0 {
                s.lease_races -= 1;
                s.lease_rv += 1;
                let mut l = current;
                l["metadata"]["resourceVersion"] = json!(s.lease_rv.to_string());
                if let Some(h) = s.concurrent_history.clone() {
                    l["metadata"]["annotations"][ANNOTATION_HISTORY] = json!(h);
                }
                s.lease = Some(l);
                return status(409, "Conflict", "the object has been modified");
            }
            let Some(mut new) = body_json else {
                return status(400, "BadRequest", "no body");
            };
            if new["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(409, "Conflict", "the object has been modified");
            }
            if dry_run {
                return json_response(200, &new);
            }
            s.lease_rv += 1;
            new["metadata"]["resourceVersion"] = json!(s.lease_rv.to_string());
            s.lease = Some(new.clone());
            json_response(200, &new)
        }
        ("POST" | "PATCH", p) if p.starts_with(&events_path) && ctx.lock().stall_events => {
            // Answer nothing until the client gives up.
            futures::future::pending::<Response>().await
        }
        ("POST", p) if p == events_path => {
            let v = body_json.unwrap_or(Value::Null);
            if dry_run {
                return json_response(201, &v);
            }
            ctx.lock().events.push(v.clone());
            json_response(201, &v)
        }
        ("PATCH", p) if p.starts_with(&events_path) => {
            let v = body_json.unwrap_or(Value::Null);
            ctx.lock().events.push(v.clone());
            json_response(200, &v)
        }
        _ => status(
            404,
            "NotFound",
            &format!("stand-in does not serve {method} {path}"),
        ),
    }
}

/// A watch of the pod: MODIFIED whenever its resourceVersion moves.
fn watch_pod(ctx: Ctx) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let mut changed = ctx.changed.subscribe();
    let (mut last_rv, epoch) = {
        let s = ctx.lock();
        (s.pod_rv, s.pod_watch_epoch)
    };
    tokio::spawn(async move {
        loop {
            if changed.changed().await.is_err() {
                return;
            }
            let (rv, pod) = {
                let s = ctx.lock();
                if s.pod_watch_epoch != epoch {
                    // Cut: dropping the sender ends the stream.
                    return;
                }
                (s.pod_rv, s.pod.clone())
            };
            if rv != last_rv {
                last_rv = rv;
                if let Some(pod) = pod {
                    let line = json!({"type": "MODIFIED", "object": pod}).to_string() + "\n";
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    stream_response("application/json", rx)
}

fn log_stream(ctx: Ctx, query: &str) -> Response {
    let since: Option<Timestamp> = query_param(query, "sinceTime").and_then(|s| s.parse().ok());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // Without `follow` the kubelet sends what is there and closes.
    let follow = query_param(query, "follow").as_deref() == Some("true");
    let (limit, floor, stall) = {
        let mut s = ctx.lock();
        if s.log_feed && follow {
            // A reconnect replaces the earlier stream.
            s.log_tx = Some(tx);
            return stream_response("text/plain", rx);
        }
        (
            s.log_drops.pop_front(),
            s.log_floor,
            s.stall_follow && follow,
        )
    };
    let mut changed = ctx.changed.subscribe();
    tokio::spawn(async move {
        if stall {
            // Hold the stream open without a byte until the client goes.
            tx.closed().await;
            return;
        }
        let mut next = 0usize;
        let mut sent = 0usize;
        loop {
            let (batch, done) = {
                let s = ctx.lock();
                let batch: Vec<String> = s.log[next..]
                    .iter()
                    .filter(|(ts, _)| since.is_none_or(|since| *ts >= since))
                    .filter(|(ts, _)| floor.is_none_or(|floor| *ts >= floor))
                    .map(|(ts, l)| format!("{} {l}\n", ts.strftime("%Y-%m-%dT%H:%M:%S%.9fZ")))
                    .collect();
                next = s.log.len();
                (batch, s.log_done)
            };
            for line in batch {
                if limit.is_some_and(|l| sent >= l) {
                    return; // dropped stream
                }
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
                sent += 1;
            }
            if limit.is_some_and(|l| sent >= l) || done || !follow {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
    stream_response("text/plain", rx)
}
