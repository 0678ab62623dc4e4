//! The review handler: bytes of an AdmissionReview in, status and bytes of
//! the answer out. Pure (no I/O, no clock), so the HTTP layer stays thin
//! and the fuzz target can drive it directly.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
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

fn answer(response: AdmissionResponse, outcome: Outcome, rbac: Option<RbacTarget>) -> ReviewResult {
    let uid = Some(response.uid.clone());
    let review = response.into_review();
    match serde_json::to_vec(&review) {
        Ok(body) => ReviewResult {
            status: 200,
            body,
            outcome,
            uid,
            rbac,
        },
        // Not reachable with kube's types; answered rather than panicking.
        Err(err) => error_result(
            500,
            ErrorReason::InvalidJson,
            &format!("serialising the response: {err}"),
        ),
    }
}

/// Handles one `/mutate` body; `mode` is the sidecar mode in force.
pub fn handle(body: &[u8], cfg: &InjectConfig, mode: SidecarMode) -> ReviewResult {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(err) => {
            return error_result(
                400,
                ErrorReason::InvalidJson,
                &format!("body is not an AdmissionReview: {err}"),
            );
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            return error_result(
                400,
                ErrorReason::NoRequest,
                "AdmissionReview has no request",
            );
        }
    };
    let mut response = AdmissionResponse::from(&request);
    // Always answer in v1, whatever the request's TypeMeta says.
    response.types.api_version = ADMISSION_API_VERSION.to_owned();
    response.types.kind = "AdmissionReview".to_owned();

    let is_pod = request.kind.group.is_empty()
        && request.kind.version == "v1"
        && request.kind.kind == "Pod"
        && request.sub_resource.as_deref().unwrap_or("").is_empty();
    if !is_pod {
        return answer(response, Outcome::Skipped(Skip::NotPod), None);
    }
    if request.operation != Operation::Create {
        return answer(response, Outcome::Skipped(Skip::NotCreate), None);
    }
    let Some(object) = request.object.as_ref() else {
        return answer(response, Outcome::Skipped(Skip::NoObject), None);
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(err) => {
            let mut response = response;
            response.warnings = Some(vec![format!(
                "arc-watchdog: object is not a valid Pod ({err}); not injected"
            )]);
            return answer(response, Outcome::Error(ErrorReason::InvalidPod), None);
        }
    };

    match mutation::mutate(&pod, cfg, mode) {
        Decision::Skip(reason) => answer(response, Outcome::Skipped(Skip::Pod(reason)), None),
        Decision::Inject { mode, patch } => {
            let rbac = (!request.dry_run)
                .then(|| rbac_target(&request, &pod))
                .flatten();
            match response.clone().with_patch(patch) {
                Ok(patched) => answer(patched, Outcome::Injected(mode), rbac),
                Err(err) => {
                    let mut response = response;
                    response.warnings =
                        Some(vec![format!("arc-watchdog: patch not serialisable: {err}")]);
                    answer(response, Outcome::Error(ErrorReason::InvalidPod), None)
                }
            }
        }
    }
}

fn rbac_target(request: &AdmissionRequest<DynamicObject>, pod: &Pod) -> Option<RbacTarget> {
    let pod_name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| Some(request.name.clone()).filter(|n| !n.is_empty()))?;
    let namespace = request
        .namespace
        .clone()
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
