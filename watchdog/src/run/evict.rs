//! Evicting the own pod through the Eviction API (policy/v1).
//!
//! An eviction, unlike a delete, respects PodDisruptionBudgets and gives
//! the listener its SIGTERM and grace period, so it deletes its message
//! session on the way out. A PDB answers 429: retried with exponential
//! backoff, a bounded number of times. The request carries a UID
//! precondition: a newer pod generation with the same name is never hit.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::core::Status;
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::RunArgs;
use super::backoff::Backoff;
use super::gate;
use super::http::Shared;
use super::pod::{ListenerState, PodView};
use crate::detector::EvictCause;

/// The log message of an eviction request being sent (logged once per
/// eviction sent, never for one decided and then found moot or blocked
/// before sending: tools count it).
pub const EVICTING_LOG: &str = "evicting the own pod";

/// How a 429 is retried.
#[derive(Debug, Clone)]
pub struct EvictRetry {
    /// First delay after a 429.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// Attempts in all (the first one included).
    pub attempts: u32,
}

impl Default for EvictRetry {
    /// 1 s, doubling to 30 s, 6 attempts: about a minute and a half.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            attempts: 6,
        }
    }
}

/// What became of an eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictOutcome {
    /// The API server accepted the eviction (the pod is terminating).
    Evicted {
        /// Attempts it took.
        attempts: u32,
    },
    /// The API server accepted a `dryRun=All` eviction: nothing happened.
    DryRunAccepted,
    /// Still 429 (a PodDisruptionBudget) after every attempt.
    Blocked {
        /// Attempts made.
        attempts: u32,
        /// The last answer.
        last: String,
    },
    /// The pod is gone, or is another generation (404, UID precondition).
    Gone(String),
    /// RBAC forbids it.
    Forbidden(String),
    /// Another error (network, 5xx): not retried, the next decision will
    /// try again.
    Failed(String),
    /// Shutting down while waiting to retry after a 429: not evicted.
    Cancelled,
}

/// The body of a policy/v1 Eviction of pod `name` (UID `uid`).
pub fn eviction_body(namespace: &str, name: &str, uid: Option<&str>) -> serde_json::Value {
    let mut body = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": { "name": name, "namespace": namespace },
    });
    if let Some(uid) = uid {
        body["deleteOptions"] = json!({ "preconditions": { "uid": uid } });
    }
    body
}

async fn post_eviction(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    dry_run: bool,
) -> Result<Status, kube::Error> {
    let mut url = format!("/api/v1/namespaces/{namespace}/pods/{name}/eviction");
    if dry_run {
        url.push_str("?dryRun=All");
    }
    let body = serde_json::to_vec(&eviction_body(namespace, name, uid))
        .map_err(kube::Error::SerdeError)?;
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(kube::Error::HttpError)?;
    client.request::<Status>(req).await
}

/// Evicts pod `name` in `namespace` (only if its UID is still `uid`), or
/// only asks the API server whether it could when `dry_run` (`dryRun=All`:
/// nothing is evicted). `cancel` stops the waits between attempts, never a
/// request on its way: an eviction the API server may have accepted is
/// always answered, so the caller knows whether it counts.
pub async fn evict_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    dry_run: bool,
    retry: &EvictRetry,
    cancel: &CancellationToken,
) -> EvictOutcome {
    let mut backoff = Backoff::new(retry.initial, retry.max);
    let attempts = retry.attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        if cancel.is_cancelled() {
            return EvictOutcome::Cancelled;
        }
        let res = post_eviction(client, namespace, name, uid, dry_run).await;
        match res {
            Ok(_) if dry_run => return EvictOutcome::DryRunAccepted,
            Ok(_) => return EvictOutcome::Evicted { attempts: attempt },
            Err(kube::Error::Api(s)) => {
                let text = format!("{} {}: {}", s.code, s.reason, s.message);
                match s.code {
                    429 => last = text,
                    404 | 409 => return EvictOutcome::Gone(text),
                    401 | 403 => return EvictOutcome::Forbidden(text),
                    _ => return EvictOutcome::Failed(text),
                }
            }
            Err(e) => return EvictOutcome::Failed(e.to_string()),
        }
        if attempt < attempts {
            tokio::select! {
                () = cancel.cancelled() => return EvictOutcome::Cancelled,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
    EvictOutcome::Blocked { attempts, last }
}

/// Why a fresh look forbids an eviction.
pub(crate) enum Fresh {
    /// The reason is gone (the pod is terminating or replaced, the
    /// listener runs again): nothing to do.
    Moot(String),
    /// The pod could not be read: no eviction on a guess.
    Unknown(String),
}

/// Why an eviction for a hung run or a restart during the backoff is moot:
/// the run the detector judged is not the pod's current listener run (a run
/// of an earlier pod left open in the Lease, or one that has been replaced).
pub(crate) fn judged_elsewhere(
    view: &PodView,
    cause: EvictCause,
    judged_run: Option<&str>,
) -> Option<String> {
    if !matches!(cause, EvictCause::Hung | EvictCause::RestartedDuringBackoff) {
        return None;
    }
    let current = view
        .listener
        .as_ref()
        .and_then(|l| l.container_id.as_deref());
    match (judged_run, current) {
        (Some(judged), Some(current)) if judged == current => None,
        (judged, current) => Some(format!(
            "the run judged ({}) is not the pod's current listener run ({})",
            judged.unwrap_or("none"),
            current.unwrap_or("none")
        )),
    }
}

/// Re-reads the own pod right before an eviction: an eviction needs a
/// fresh observation, never a guess. Ok when the pod is still this
/// generation, not terminating, (for a dead listener) the listener still
/// dead, and (for a hung run or a restart during the backoff) the run the
/// detector judged, `judged_run`, is the pod's current listener run.
pub(crate) async fn fresh_check(
    pods: &Api<Pod>,
    args: &RunArgs,
    listener_container: &str,
    cause: EvictCause,
    judged_run: Option<&str>,
    shared: &Shared,
) -> Result<(), Fresh> {
    let pod = match pods.get(&args.identity.pod_name).await {
        Ok(p) => p,
        Err(e) => {
            shared.metrics.api_error(gate::OP_POD_GET);
            return Err(Fresh::Unknown(format!(
                "re-reading the pod before evicting: {}",
                super::logs::error_text(&e)
            )));
        }
    };
    let view = PodView::from_pod(&pod, listener_container);
    if args.identity.pod_uid.is_some() && view.uid != args.identity.pod_uid {
        return Err(Fresh::Moot("the pod is another generation".to_owned()));
    }
    if view.terminating {
        return Err(Fresh::Moot("the pod is already terminating".to_owned()));
    }
    if let Some(why) = judged_elsewhere(&view, cause, judged_run) {
        return Err(Fresh::Moot(why));
    }
    if cause == EvictCause::ListenerDead {
        let dead = view
            .listener
            .as_ref()
            .is_some_and(|l| matches!(l.state, ListenerState::Terminated { .. }));
        if !dead || !view.alive() {
            return Err(Fresh::Moot(
                "the listener is no longer dead in a living pod".to_owned(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::pod::{ListenerState, ListenerView};

    fn view(container_id: Option<&str>) -> PodView {
        PodView {
            listener: Some(ListenerView {
                container_id: container_id.map(str::to_owned),
                restart_count: 0,
                state: ListenerState::Running { started_at: None },
                last_terminated: None,
                image: None,
            }),
            ..PodView::default()
        }
    }

    #[test]
    fn a_hung_or_restarted_run_must_be_the_pods_current_run() {
        let current = view(Some("containerd://new"));
        for cause in [EvictCause::Hung, EvictCause::RestartedDuringBackoff] {
            assert_eq!(
                judged_elsewhere(&current, cause, Some("containerd://new")),
                None
            );
            let why = judged_elsewhere(&current, cause, Some("containerd://old")).unwrap();
            assert!(
                why.contains("containerd://old") && why.contains("containerd://new"),
                "{why}"
            );
            assert!(judged_elsewhere(&current, cause, None).is_some());
            assert!(judged_elsewhere(&view(None), cause, Some("containerd://old")).is_some());
        }
        // A dead listener is checked by its state, not its run.
        assert_eq!(
            judged_elsewhere(&current, EvictCause::ListenerDead, Some("containerd://old")),
            None
        );
    }
}
