//! The review handler: bytes of an AdmissionReview in, status and bytes of
//! the answer out. Pure (no I/O, no clock: the time and the suspensions
//! are passed in), so the HTTP layer stays thin and the fuzz target can
//! drive it directly.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::core::admission::Operation;
use kube::core::{GroupVersionKind, GroupVersionResource};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use crate::leases::{ListenerLeases, NoLeases};
use crate::mutation::{
    self, InjectConfig, ListenerFacts, Mutation, SidecarMode, SkipReason, StartGate,
};

/// API version of the AdmissionReview this webhook speaks.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// How a review ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The watchdog was injected in this mode.
    Injected(SidecarMode),
    /// Allowed without a patch.
    Skipped(Skip),
    /// The request could not be handled as asked.
    Error(ErrorReason),
}

/// Why a review was allowed without a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The object is not a core/v1 Pod.
    NotPod,
    /// Not a CREATE (containers are immutable: patching an UPDATE would
    /// make ARC's own updates fail).
    NotCreate,
    /// A CREATE without an object.
    NoObject,
    /// The mutation's own reasons.
    Pod(SkipReason),
}

/// Why a review failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// The body is not an AdmissionReview (HTTP 400).
    InvalidJson,
    /// The review has no `request` (HTTP 400).
    NoRequest,
    /// The body is larger than `--max-body-bytes` (HTTP 413).
    TooLarge,
    /// The body did not arrive, or the review was not handled, within
    /// `--request-timeout` (HTTP 408).
    Timeout,
    /// Buffering the body would have gone over `--max-buffered-bytes`
    /// (HTTP 503).
    Overloaded,
    /// The object is not a valid Pod. Allowed without a patch: the API
    /// server will judge the pod itself, and the webhook fails open.
    InvalidPod,
}

impl Outcome {
    /// The `outcome` metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Injected(_) => "injected",
            Self::Skipped(_) => "skipped",
            Self::Error(_) => "error",
        }
    }

    /// The `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Injected(mode) => mode.as_str(),
            Self::Skipped(Skip::NotPod) => "not_pod",
            Self::Skipped(Skip::NotCreate) => "not_create",
            Self::Skipped(Skip::NoObject) => "no_object",
            Self::Skipped(Skip::Pod(r)) => r.as_str(),
            Self::Error(ErrorReason::InvalidJson) => "invalid_json",
            Self::Error(ErrorReason::NoRequest) => "no_request",
            Self::Error(ErrorReason::TooLarge) => "too_large",
            Self::Error(ErrorReason::Timeout) => "timeout",
            Self::Error(ErrorReason::Overloaded) => "overloaded",
            Self::Error(ErrorReason::InvalidPod) => "invalid_pod",
        }
    }
}

/// The answer to one HTTP request on `/mutate`.
#[derive(Debug, Clone)]
pub struct ReviewResult {
    /// HTTP status: 200 for any answered review, 400 for unreadable input.
    pub status: u16,
    /// JSON body: an AdmissionReview, or `{"error": ...}`.
    pub body: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
    /// Request uid, when there was one (for logs).
    pub uid: Option<String>,
}

/// An `{"error": message}` answer.
pub fn error_result(status: u16, reason: ErrorReason, message: &str) -> ReviewResult {
    ReviewResult {
        status,
        body: json!({ "error": message }).to_string().into_bytes(),
        outcome: Outcome::Error(reason),
        uid: None,
    }
}

/// The AdmissionReview (admission.k8s.io/v1) fields the webhook reads.
///
/// Our own type rather than kube's `AdmissionReview<DynamicObject>`: that one
/// flattens its type meta and the object's fields, so serde buffers the whole
/// object before building it, and the object then needs a second conversion
/// into a `Pod`. Here the object is read in one pass as `O` (a `Pod` on the
/// fast path). Required fields are the ones kube's type requires, so a body
/// kube refused is still refused.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<O> {
    /// Required, but any version is answered in v1.
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    request: Option<RequestIn<O>>,
}

/// `AdmissionReview.request`, the fields the webhook reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<O> {
    uid: String,
    kind: GroupVersionKind,
    /// The namespace of the object (a pod being created may leave its own
    /// `metadata.namespace` empty).
    #[serde(default)]
    namespace: Option<String>,
    #[serde(rename = "resource")]
    _resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    operation: Operation,
    #[serde(rename = "userInfo")]
    _user_info: UserInfo,
    object: Option<O>,
    /// Never looked at: skipped without being built.
    #[serde(rename = "oldObject")]
    _old_object: Option<IgnoredAny>,
}

/// The answer, admission.k8s.io/v1 `AdmissionReview` with a `response`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

/// `AdmissionReview.response`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    /// Always empty (the webhook never denies); kept as kube wrote it.
    status: EmptyStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// The JSON patch, standard base64: how the API defines `[]byte`.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<Vec<String>>,
}

/// An empty `metav1.Status`, serialised as `{}`.
#[derive(Serialize)]
struct EmptyStatus {}

/// What goes into an answered (HTTP 200) review.
struct Answer {
    patch: Option<String>,
    warnings: Option<Vec<String>>,
    outcome: Outcome,
}

impl Answer {
    fn plain(outcome: Outcome) -> Self {
        Self {
            patch: None,
            warnings: None,
            outcome,
        }
    }

    fn warning(outcome: Outcome, warning: String) -> Self {
        Self {
            warnings: Some(vec![warning]),
            ..Self::plain(outcome)
        }
    }
}

/// Capacity of the buffers an answer is written into: an injecting answer
/// and its patch fit.
const ANSWER_CAPACITY: usize = 4 * 1024;

/// The JSON of `patch`.
fn patch_json(patch: &mutation::Patch) -> Result<Vec<u8>, serde_json::Error> {
    let mut json = Vec::with_capacity(ANSWER_CAPACITY);
    serde_json::to_writer(&mut json, patch)?;
    Ok(json)
}

fn answer(uid: String, answer: Answer) -> ReviewResult {
    let review = ReviewOut {
        api_version: ADMISSION_API_VERSION,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid: &uid,
            allowed: true,
            status: EmptyStatus {},
            patch_type: answer.patch.as_ref().map(|_| "JSONPatch"),
            patch: answer.patch,
            warnings: answer.warnings,
        },
    };
    // Sized for an injecting answer (a few KiB), so the buffer is not
    // regrown and copied on the way.
    let mut body = Vec::with_capacity(ANSWER_CAPACITY);
    match serde_json::to_writer(&mut body, &review) {
        Ok(()) => ReviewResult {
            status: 200,
            body,
            outcome: answer.outcome,
            uid: Some(uid),
        },
        // Not reachable with these types; answered rather than panicking.
        Err(err) => error_result(
            500,
            ErrorReason::InvalidJson,
            &format!("serialising the response: {err}"),
        ),
    }
}

/// What a review is judged against besides the body and the configuration.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The sidecar mode in force.
    pub mode: SidecarMode,
    /// What the listeners' Leases say: suspensions, pending backoffs.
    pub leases: &'a dyn ListenerLeases,
    /// The time of the review.
    pub now: Timestamp,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("mode", &self.mode)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// Handles one `/mutate` body; `mode` is the sidecar mode in force. No
/// Lease is known (no listener suspended, every start gate probed):
/// [`handle_with`] for the webhook's own view.
pub fn handle(body: &[u8], cfg: &InjectConfig, mode: SidecarMode) -> ReviewResult {
    handle_with(
        body,
        cfg,
        Context {
            mode,
            leases: &NoLeases,
            now: Timestamp::UNIX_EPOCH,
        },
    )
}

/// Handles one `/mutate` body in `ctx`.
pub fn handle_with(body: &[u8], cfg: &InjectConfig, ctx: Context<'_>) -> ReviewResult {
    // Fast path: the object read straight into a Pod.
    let err = match serde_json::from_slice::<ReviewIn<Pod>>(body) {
        Ok(review) => return review_answer(review, Ok, cfg, ctx),
        Err(err) => err,
    };
    // Not JSON, or cut short: a second reading could not change the answer,
    // so a malformed body costs one pass only.
    if !err.is_data() {
        return not_a_review(&err);
    }
    // Well-formed JSON that did not fit: either the review itself is wrong
    // or its object is not a valid Pod. The object is kept as borrowed raw
    // text, never built into a tree (a `Value` of a crafted body can take
    // many times the body's size), and only an object the checks below
    // reach is judged as a Pod.
    match serde_json::from_slice::<ReviewIn<&RawValue>>(body) {
        Ok(review) => review_answer(
            review,
            |raw: &RawValue| serde_json::from_str(raw.get()),
            cfg,
            ctx,
        ),
        Err(err) => not_a_review(&err),
    }
}

fn not_a_review(err: &serde_json::Error) -> ReviewResult {
    error_result(
        400,
        ErrorReason::InvalidJson,
        &format!("body is not an AdmissionReview: {err}"),
    )
}

/// The message of `err` without its position: the position is counted from
/// the start of the object, not of the body, so it would mislead.
fn message_without_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

fn review_answer<O>(
    review: ReviewIn<O>,
    into_pod: impl FnOnce(O) -> Result<Pod, serde_json::Error>,
    cfg: &InjectConfig,
    ctx: Context<'_>,
) -> ReviewResult {
    let Some(request) = review.request else {
        return error_result(
            400,
            ErrorReason::NoRequest,
            "AdmissionReview has no request",
        );
    };
    let is_pod = request.kind.group.is_empty()
        && request.kind.version == "v1"
        && request.kind.kind == "Pod"
        && request.sub_resource.as_deref().unwrap_or("").is_empty();
    if !is_pod {
        return answer(request.uid, Answer::plain(Outcome::Skipped(Skip::NotPod)));
    }
    if request.operation != Operation::Create {
        return answer(
            request.uid,
            Answer::plain(Outcome::Skipped(Skip::NotCreate)),
        );
    }
    let Some(object) = request.object else {
        return answer(request.uid, Answer::plain(Outcome::Skipped(Skip::NoObject)));
    };
    let pod = match into_pod(object) {
        Ok(p) => p,
        Err(err) => {
            return answer(
                request.uid,
                Answer::warning(
                    Outcome::Error(ErrorReason::InvalidPod),
                    format!(
                        "arc-watchdog: object is not a valid Pod ({}); not injected",
                        message_without_position(&err)
                    ),
                ),
            );
        }
    };

    // ARC names the listener pod after its AutoscalingListener, and its
    // Lease is kept per listener.
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .or(request.namespace.as_deref())
        .unwrap_or_default();
    let listener = pod
        .metadata
        .name
        .as_deref()
        .filter(|name| !name.is_empty() && !namespace.is_empty());
    let facts = ListenerFacts {
        suspended_until: listener
            .and_then(|name| ctx.leases.suspended_until(namespace, name, ctx.now)),
        gate: StartGate::for_listener(
            cfg,
            listener.and_then(|name| ctx.leases.backoff_pending(namespace, name, ctx.now)),
        ),
    };

    match mutation::mutate_for(&pod, cfg, ctx.mode, facts) {
        Mutation::Skip(SkipReason::HostNetwork) => answer(
            request.uid,
            Answer::warning(
                Outcome::Skipped(Skip::Pod(SkipReason::HostNetwork)),
                "arc-watchdog: not injected into a hostNetwork listener pod (the watchdog's port \
                 would be the node's); this listener runs without the watchdog"
                    .to_owned(),
            ),
        ),
        Mutation::Skip(reason) => answer(
            request.uid,
            Answer::plain(Outcome::Skipped(Skip::Pod(reason))),
        ),
        Mutation::Suspended { until, patch } => match patch_json(&patch) {
            Ok(patch) => answer(
                request.uid,
                Answer {
                    patch: Some(BASE64.encode(patch)),
                    warnings: Some(vec![format!(
                        "arc-watchdog: injection is suspended for this listener until {until} \
                         (its watchdog kept an earlier pod from starting; see the Lease \
                         {lease}); admitted without the watchdog",
                        lease = arc_watchdog_core::names::lease_name(
                            pod.metadata.name.as_deref().unwrap_or_default()
                        ),
                    )]),
                    outcome: Outcome::Skipped(Skip::Pod(SkipReason::InjectionSuspended)),
                },
            ),
            Err(err) => answer(
                request.uid,
                Answer::warning(
                    Outcome::Error(ErrorReason::InvalidPod),
                    format!("arc-watchdog: patch not serialisable: {err}"),
                ),
            ),
        },
        Mutation::Inject { mode, patch } => match patch_json(&patch) {
            Ok(patch) => answer(
                request.uid,
                Answer {
                    patch: Some(BASE64.encode(patch)),
                    warnings: None,
                    outcome: Outcome::Injected(mode),
                },
            ),
            Err(err) => answer(
                request.uid,
                Answer::warning(
                    Outcome::Error(ErrorReason::InvalidPod),
                    format!("arc-watchdog: patch not serialisable: {err}"),
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> InjectConfig {
        InjectConfig::new("img")
    }

    #[test]
    fn not_json_is_400_with_json_error() {
        for body in [
            &b"not json"[..],
            b"",
            b"[]",
            b"{\"request\": 5}",
            b"\xff\xfe",
        ] {
            let r = handle(body, &cfg(), SidecarMode::Native);
            assert_eq!(r.status, 400, "{body:?}");
            assert_eq!(r.outcome, Outcome::Error(ErrorReason::InvalidJson));
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("not an AdmissionReview")
            );
        }
    }

    #[test]
    fn review_without_request_is_400() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        let r = handle(body, &cfg(), SidecarMode::Native);
        assert_eq!(r.status, 400);
        assert_eq!(r.outcome, Outcome::Error(ErrorReason::NoRequest));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "AdmissionReview has no request");
    }

    #[test]
    fn labels_are_distinct_per_outcome() {
        let all = [
            Outcome::Injected(SidecarMode::Native),
            Outcome::Injected(SidecarMode::Classic),
            Outcome::Skipped(Skip::NotPod),
            Outcome::Skipped(Skip::NotCreate),
            Outcome::Skipped(Skip::NoObject),
            Outcome::Skipped(Skip::Pod(SkipReason::NotListener)),
            Outcome::Skipped(Skip::Pod(SkipReason::OptedOut)),
            Outcome::Skipped(Skip::Pod(SkipReason::AlreadyInjected)),
            Outcome::Skipped(Skip::Pod(SkipReason::HostNetwork)),
            Outcome::Skipped(Skip::Pod(SkipReason::InjectionSuspended)),
            Outcome::Error(ErrorReason::InvalidJson),
            Outcome::Error(ErrorReason::NoRequest),
            Outcome::Error(ErrorReason::TooLarge),
            Outcome::Error(ErrorReason::Timeout),
            Outcome::Error(ErrorReason::Overloaded),
            Outcome::Error(ErrorReason::InvalidPod),
        ];
        let reasons: std::collections::BTreeSet<_> = all.iter().map(Outcome::reason).collect();
        assert_eq!(reasons.len(), all.len());
    }

    mod suspended {
        use super::*;
        use crate::leases::FixedLeases;
        use crate::suspension::Suspension;
        use arc_watchdog_core::backoff::Backoff;
        use arc_watchdog_core::names;
        use std::time::Duration;

        const LISTENER_REVIEW: &str = include_str!("../tests/golden/inputs/listener-0.14.2.json");
        const LISTENER: &str = "arc-runner-set-754b578d-listener";

        fn at(s: &str) -> Timestamp {
            s.parse().unwrap()
        }

        fn view(namespace: &str, until: &str) -> FixedLeases {
            FixedLeases {
                suspensions: [(
                    (namespace.to_owned(), LISTENER.to_owned()),
                    Suspension {
                        until: at(until),
                        reason: "ImagePullBackOff".to_owned(),
                    },
                )]
                .into(),
                max: Duration::from_secs(3600),
                backoffs: None,
            }
        }

        /// A view that knows `LISTENER`'s backoff in arc-systems: held
        /// until `not_before`, or none.
        fn backoff(not_before: Option<&str>) -> FixedLeases {
            FixedLeases {
                backoffs: Some(
                    [(
                        ("arc-systems".to_owned(), LISTENER.to_owned()),
                        Backoff::until(not_before.map(at)),
                    )]
                    .into(),
                ),
                ..FixedLeases::default()
            }
        }

        fn review(body: &[u8], leases: &dyn ListenerLeases, now: &str) -> ReviewResult {
            review_as(body, &cfg(), leases, now)
        }

        fn review_as(
            body: &[u8],
            cfg: &InjectConfig,
            leases: &dyn ListenerLeases,
            now: &str,
        ) -> ReviewResult {
            handle_with(
                body,
                cfg,
                Context {
                    mode: SidecarMode::Native,
                    leases,
                    now: at(now),
                },
            )
        }

        /// The injected watchdog container of an answer's patch.
        fn injected_watchdog(r: &ReviewResult) -> serde_json::Value {
            assert_eq!(r.outcome, Outcome::Injected(SidecarMode::Native));
            let ops = patch(r);
            ops.as_array()
                .unwrap()
                .iter()
                .find_map(|op| {
                    let v = &op["value"];
                    let c = if v.is_array() { &v[0] } else { v };
                    (c["name"] == names::CONTAINER_NAME).then(|| c.clone())
                })
                .unwrap()
        }

        #[test]
        fn the_start_gate_is_probed_only_while_a_backoff_is_pending_or_unknown() {
            let body = LISTENER_REVIEW.as_bytes();
            let now = "2025-01-01T00:10:00Z";
            let probed = |r: &ReviewResult| {
                let c = injected_watchdog(r);
                assert_eq!(c["restartPolicy"], "Always", "still a native sidecar");
                c.get("startupProbe").is_some()
            };
            // Known: no Lease history, an ended backoff, a pending one.
            assert!(!probed(&review(body, &backoff(None), now)));
            assert!(
                !probed(&review(body, &backoff(Some(now)), now)),
                "ends at not_before"
            );
            assert!(probed(&review(
                body,
                &backoff(Some("2025-01-01T00:10:01Z")),
                now
            )));
            // Unknown: no view, or a view that knows another namespace only.
            assert!(probed(&review(body, &NoLeases, now)));
            assert!(probed(&review(
                body,
                &view("arc-systems", "2000-01-01T00:00:00Z"),
                now
            )));
            // Dry run never delays a start: no probe even with a backoff.
            let mut dry = cfg();
            dry.thresholds.dry_run = true;
            let r = review_as(body, &dry, &backoff(Some("2025-01-01T01:00:00Z")), now);
            assert!(!probed(&r));
            // Without the probe, the rest of the container is the same.
            let mut with = injected_watchdog(&review(body, &NoLeases, now));
            with.as_object_mut().unwrap().remove("startupProbe");
            assert_eq!(injected_watchdog(&review(body, &backoff(None), now)), with);
        }

        fn response(r: &ReviewResult) -> serde_json::Value {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["response"].clone()
        }

        fn patch(r: &ReviewResult) -> serde_json::Value {
            let b64 = response(r)["patch"].as_str().unwrap().to_owned();
            serde_json::from_slice(&BASE64.decode(b64).unwrap()).unwrap()
        }

        #[test]
        fn a_suspended_listener_is_admitted_without_the_watchdog_marked_and_warned() {
            let suspensions = view("arc-systems", "2025-01-01T01:00:00Z");
            let r = review(
                LISTENER_REVIEW.as_bytes(),
                &suspensions,
                "2025-01-01T00:10:00Z",
            );
            assert_eq!(r.status, 200);
            assert_eq!(
                r.outcome,
                Outcome::Skipped(Skip::Pod(SkipReason::InjectionSuspended))
            );
            assert_eq!(r.outcome.reason(), "injection_suspended");
            // The only change: the marking annotation.
            assert_eq!(
                patch(&r),
                json!([{
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {"arc-watchdog.dev/injection-suspended": "2025-01-01T01:00:00Z"},
                }])
            );
            let warnings = response(&r)["warnings"].clone();
            let warning = warnings[0].as_str().unwrap();
            assert!(warning.contains("suspended"), "{warning}");
            assert!(warning.contains("2025-01-01T01:00:00Z"), "{warning}");
            assert!(warning.contains(&names::lease_name(LISTENER)), "{warning}");
        }

        #[test]
        fn an_ended_or_unrelated_suspension_changes_nothing() {
            let injected = handle(LISTENER_REVIEW.as_bytes(), &cfg(), SidecarMode::Native);
            assert_eq!(injected.outcome, Outcome::Injected(SidecarMode::Native));
            for (suspensions, now) in [
                // Ended.
                (
                    view("arc-systems", "2025-01-01T01:00:00Z"),
                    "2025-01-01T01:00:00Z",
                ),
                // Further away than --suspend-injection-for: not ours.
                (
                    view("arc-systems", "2030-01-01T00:00:00Z"),
                    "2025-01-01T00:00:00Z",
                ),
                // Another namespace's listener of the same name.
                (
                    view("other", "2025-01-01T01:00:00Z"),
                    "2025-01-01T00:10:00Z",
                ),
            ] {
                let r = review(LISTENER_REVIEW.as_bytes(), &suspensions, now);
                assert_eq!(r.outcome, Outcome::Injected(SidecarMode::Native));
                assert_eq!(r.body, injected.body);
            }
        }

        #[test]
        fn the_requests_namespace_counts_when_the_pod_has_none() {
            let mut v: serde_json::Value = serde_json::from_str(LISTENER_REVIEW).unwrap();
            v["request"]["object"]["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("namespace");
            let body = serde_json::to_vec(&v).unwrap();
            let suspensions = view("arc-systems", "2025-01-01T01:00:00Z");
            let r = review(&body, &suspensions, "2025-01-01T00:10:00Z");
            assert_eq!(
                r.outcome,
                Outcome::Skipped(Skip::Pod(SkipReason::InjectionSuspended))
            );
            // Neither has one: no listener is named, none is looked up.
            v["request"].as_object_mut().unwrap().remove("namespace");
            let body = serde_json::to_vec(&v).unwrap();
            let r = review(
                &body,
                &view("", "2025-01-01T01:00:00Z"),
                "2025-01-01T00:10:00Z",
            );
            assert_eq!(r.outcome, Outcome::Injected(SidecarMode::Native));
        }

        #[test]
        fn a_context_shows_its_mode_and_time() {
            let ctx = Context {
                mode: SidecarMode::Native,
                leases: &NoLeases,
                now: at("2025-01-01T00:10:00Z"),
            };
            let shown = format!("{ctx:?}");
            assert!(shown.contains("Native"), "{shown}");
            assert!(shown.contains("2025-01-01T00:10:00Z"), "{shown}");
        }

        #[test]
        fn a_host_network_listener_is_skipped_with_a_warning() {
            let mut v: serde_json::Value = serde_json::from_str(LISTENER_REVIEW).unwrap();
            v["request"]["object"]["spec"]["hostNetwork"] = json!(true);
            let body = serde_json::to_vec(&v).unwrap();
            let r = review(&body, &NoLeases, "2025-01-01T00:00:00Z");
            assert_eq!(
                r.outcome,
                Outcome::Skipped(Skip::Pod(SkipReason::HostNetwork))
            );
            let resp = response(&r);
            assert!(resp.get("patch").is_none());
            assert!(
                resp["warnings"][0]
                    .as_str()
                    .unwrap()
                    .contains("hostNetwork")
            );
        }
    }
}
