//! Evicting the own pod through the Eviction API (policy/v1).
//!
//! An eviction, unlike a delete, respects PodDisruptionBudgets and gives
//! the listener its SIGTERM and grace period, so it deletes its message
//! session on the way out. A PDB answers 429: retried with exponential
//! backoff, a bounded number of times. The request carries a UID
//! precondition: a newer pod generation with the same name is never hit.

use std::time::Duration;

use kube::Client;
use kube::core::Status;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;

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
