//! The wire format: JSON shapes, error bodies, the admin JWT, header
//! helpers.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ScaleSet;

/// The exception type GitHub names in a session-conflict 409.
pub const SESSION_CONFLICT_TYPE: &str = "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi";

/// The exception type GitHub names when a session that is gone is deleted
/// (HTTP 400; seen in actions/actions-runner-controller#4285:
/// `StatusCode 400 ... RunnerScaleSetSessionExpiredException, GitHub.Actions.Runtime.WebApi:
/// The session identifier <id> is not valid.`).
pub const SESSION_EXPIRED_TYPE: &str = "GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionExpiredException, GitHub.Actions.Runtime.WebApi";

/// The exception type of a scale set unknown to GitHub (HTTP 404;
/// actions/actions-runner-controller#3935, #4370, #4656).
pub const SCALE_SET_NOT_FOUND_TYPE: &str =
    "GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, GitHub.Actions.Runtime.WebApi";

/// The exception type of a session refresh for a session the service no
/// longer knows (HTTP 404). Reported as `RunnerAdminException: runner
/// referenced a session ID that doesn't exist in redis` against the scaleset
/// client 0.4 used by ARC 0.14.2 (actions/scaleset#123); the namespace is
/// assumed to be the one of GitHub's other exceptions.
pub const SESSION_UNKNOWN_TYPE: &str =
    "GitHub.Actions.Runtime.WebApi.RunnerAdminException, GitHub.Actions.Runtime.WebApi";

/// The message of a refresh for an unknown session.
pub const SESSION_UNKNOWN_MESSAGE: &str =
    "runner referenced a session ID that doesn't exist in redis";

/// An Actions service error body (`typeName` is what ARC's clients read).
pub fn error_body(type_key: &str, message: &str) -> Value {
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

/// A GitHub REST API error body (`/api/v3/...`).
pub fn rest_error_body(message: &str) -> Value {
    json!({"message": message, "documentation_url": "https://docs.github.com/rest"})
}

/// Whether an endpoint belongs to GitHub's REST API rather than to the
/// Actions service (its errors have the REST format).
pub fn is_rest_endpoint(endpoint: &str) -> bool {
    matches!(endpoint, "registration_token" | "runner_registration")
}

/// The body GitHub would send with `status` from `endpoint`, as far as the
/// clients tell the difference.
pub fn failure_body(endpoint: &str, status: StatusCode) -> Option<Value> {
    let rest = is_rest_endpoint(endpoint);
    match status.as_u16() {
        // A revoked or wrong PAT: what GitHub's REST API says.
        401 if rest => Some(rest_error_body("Bad credentials")),
        401 => None,
        403 if rest => Some(rest_error_body(
            "API rate limit exceeded for installation. If you reach out to GitHub Support for help, please include the request ID.",
        )),
        404 if rest => Some(rest_error_body("Not Found")),
        404 if endpoint.starts_with("scale_set")
            || endpoint.starts_with("session")
            || matches!(
                endpoint,
                "acquire_jobs" | "acquirable_jobs" | "generate_jit_config"
            ) =>
        {
            Some(error_body(
                "RunnerScaleSetNotFoundException",
                "No runner scale set found with identifier.",
            ))
        }
        _ if rest => Some(rest_error_body(&format!("fake-github: {status}"))),
        _ => Some(json!({"message": format!("fake-github: {status} from {endpoint}")})),
    }
}

/// A response with GitHub's `ActivityId` header.
pub fn reply(status: StatusCode, body: Option<Value>) -> Response {
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

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
}

/// Admin-token check for tenant calls: any JWT this fake issued.
pub fn admin_ok(headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|t| t.split('.').count() == 3)
}

/// The statistics object of sessions and messages (all zero: no jobs).
pub fn zero_statistics() -> Value {
    json!({
        "totalAvailableJobs": 0, "totalAcquiredJobs": 0, "totalAssignedJobs": 0,
        "totalRunningJobs": 0, "totalRegisteredRunners": 0, "totalBusyRunners": 0,
        "totalIdleRunners": 0,
    })
}

/// A scale set as GitHub returns it.
pub fn scale_set_json(s: &ScaleSet) -> Value {
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
pub fn b64url(data: &[u8]) -> String {
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

/// Seconds since the Unix epoch (JWT `exp` is wall-clock time).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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

    #[test]
    fn failure_bodies_follow_the_api_they_come_from() {
        let b = failure_body("registration_token", StatusCode::UNAUTHORIZED).unwrap();
        assert_eq!(b["message"], "Bad credentials");
        assert!(failure_body("message_get", StatusCode::UNAUTHORIZED).is_none());
        let b = failure_body("session_create", StatusCode::NOT_FOUND).unwrap();
        assert_eq!(b["typeName"], SCALE_SET_NOT_FOUND_TYPE);
        let b = failure_body("message_get", StatusCode::SERVICE_UNAVAILABLE).unwrap();
        assert!(b["message"].as_str().unwrap().contains("503"));
    }
}
