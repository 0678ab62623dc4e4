//! The review handler: bytes of an AdmissionReview in, status and bytes of
//! the answer out. Pure (no I/O, no clock), so the HTTP layer stays thin
//! and the fuzz target can drive it directly.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::Operation;
use kube::core::{GroupVersionKind, GroupVersionResource};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::mutation::{self, Decision, InjectConfig, SidecarMode, SkipReason};

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
            Self::Error(ErrorReason::InvalidPod) => "invalid_pod",
        }
    }
}

/// The pod whose per-listener RBAC the webhook should ensure (an injected,
/// non-dry-run CREATE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacTarget {
    /// The listener pod's namespace.
    pub namespace: String,
    /// The listener pod's name (fixed across generations).
    pub pod_name: String,
    /// The pod's service account (`default` when unset).
    pub service_account: String,
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
    /// Set when RBAC should be ensured for the admitted pod.
    pub rbac: Option<RbacTarget>,
}

/// An `{"error": message}` answer.
pub fn error_result(status: u16, reason: ErrorReason, message: &str) -> ReviewResult {
    ReviewResult {
        status,
        body: json!({ "error": message }).to_string().into_bytes(),
        outcome: Outcome::Error(reason),
        uid: None,
        rbac: None,
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
    #[serde(rename = "resource")]
    _resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(rename = "userInfo")]
    _user_info: UserInfo,
    object: Option<O>,
    /// Never looked at: skipped without being built.
    #[serde(rename = "oldObject")]
    _old_object: Option<IgnoredAny>,
    #[serde(default)]
    dry_run: bool,
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
    rbac: Option<RbacTarget>,
}

impl Answer {
    fn plain(outcome: Outcome) -> Self {
        Self {
            patch: None,
            warnings: None,
            outcome,
            rbac: None,
        }
    }

    fn warning(outcome: Outcome, warning: String) -> Self {
        Self {
            warnings: Some(vec![warning]),
            ..Self::plain(outcome)
        }
    }
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
    match serde_json::to_vec(&review) {
        Ok(body) => ReviewResult {
            status: 200,
            body,
            outcome: answer.outcome,
            uid: Some(uid),
            rbac: answer.rbac,
        },
        // Not reachable with these types; answered rather than panicking.
        Err(err) => error_result(
            500,
            ErrorReason::InvalidJson,
            &format!("serialising the response: {err}"),
        ),
    }
}

/// Handles one `/mutate` body; `mode` is the sidecar mode in force.
pub fn handle(body: &[u8], cfg: &InjectConfig, mode: SidecarMode) -> ReviewResult {
    // Fast path: the object read straight into a Pod. Any failure (not
    // JSON, not a review, an object that is not a valid Pod) is sorted out
    // by the slow path, which reads the object as a `Value` so that only an
    // object the checks below reach is judged as a Pod.
    if let Ok(review) = serde_json::from_slice::<ReviewIn<Pod>>(body) {
        return review_answer(review, Ok, cfg, mode);
    }
    match serde_json::from_slice::<ReviewIn<serde_json::Value>>(body) {
        Ok(review) => review_answer(review, serde_json::from_value, cfg, mode),
        Err(err) => error_result(
            400,
            ErrorReason::InvalidJson,
            &format!("body is not an AdmissionReview: {err}"),
        ),
    }
}

fn review_answer<O>(
    review: ReviewIn<O>,
    into_pod: impl FnOnce(O) -> Result<Pod, serde_json::Error>,
    cfg: &InjectConfig,
    mode: SidecarMode,
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
                    format!("arc-watchdog: object is not a valid Pod ({err}); not injected"),
                ),
            );
        }
    };

    match mutation::mutate(&pod, cfg, mode) {
        Decision::Skip(reason) => answer(
            request.uid,
            Answer::plain(Outcome::Skipped(Skip::Pod(reason))),
        ),
        Decision::Inject { mode, patch } => match serde_json::to_vec(&patch) {
            Ok(patch) => {
                let rbac = (!request.dry_run)
                    .then(|| rbac_target(&request.name, request.namespace.as_deref(), &pod))
                    .flatten();
                answer(
                    request.uid,
                    Answer {
                        patch: Some(BASE64.encode(patch)),
                        warnings: None,
                        outcome: Outcome::Injected(mode),
                        rbac,
                    },
                )
            }
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

fn rbac_target(
    request_name: &str,
    request_namespace: Option<&str>,
    pod: &Pod,
) -> Option<RbacTarget> {
    let pod_name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| Some(request_name.to_owned()).filter(|n| !n.is_empty()))?;
    let namespace = request_namespace
        .map(str::to_owned)
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.namespace.clone().filter(|n| !n.is_empty()))?;
    let spec = pod.spec.as_ref();
    #[allow(deprecated)] // `serviceAccount` is the old alias the API server still fills.
    let service_account = spec
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Some(RbacTarget {
        namespace,
        pod_name,
        service_account,
    })
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
            Outcome::Error(ErrorReason::InvalidJson),
            Outcome::Error(ErrorReason::NoRequest),
            Outcome::Error(ErrorReason::TooLarge),
            Outcome::Error(ErrorReason::InvalidPod),
        ];
        let reasons: std::collections::BTreeSet<_> = all.iter().map(Outcome::reason).collect();
        assert_eq!(reasons.len(), all.len());
    }
}
