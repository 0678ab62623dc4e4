//! The controller that keeps every AutoscalingListener's Role, RoleBinding
//! and Lease as [`super::desired`] says, in the listener namespaces.
//!
//! It reconciles from ARC's own AutoscalingListeners, never from admission:
//! a forged AdmissionReview or a listener-shaped pod without a live
//! AutoscalingListener creates nothing. The objects are watched too (by
//! the managed-by label), so a deleted or edited one is repaired at once.
//! Several replicas may run it side by side: every write is a create or a
//! replace at the resourceVersion read, so two replicas never undo each
//! other; the loser of a race retries after a short delay.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use arc_watchdog_core::names;

use super::desired::{self, InvalidListener, Listener, Plan};
use crate::metrics::Metrics;

/// How often a listener is looked at again without any change seen: a
/// safety net for a missed watch event, not the repair path.
const RESYNC: Duration = Duration::from_secs(10 * 60);
/// Delay before retrying after an API error or a lost race.
const RETRY: Duration = Duration::from_secs(5);

/// Shortest and longest pause of the controller's watches after an error.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(500);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// The backoff of the controller's watches. The controller merges its four
/// watches (listeners, Roles, RoleBindings, Leases) into one stream and
/// pauses all of them after an error of any; after an API server outage each
/// of them fails once more (its resource version expired), and kube's
/// default (up to 30 s, reset only after 2 quiet minutes) then holds new
/// listeners back for minutes. Short pauses, reset by the first event.
#[derive(Debug)]
struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: WATCH_RETRY_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(WATCH_RETRY_MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_RETRY_MIN;
    }
}

/// ARC's AutoscalingListener resource.
pub fn autoscaling_listener_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "actions.github.com",
            "v1alpha1",
            names::AUTOSCALING_LISTENER_KIND,
        ),
        "autoscalinglisteners",
    )
}

/// Why one reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Api {
        /// `get`, `create` or `replace`.
        action: &'static str,
        /// Role, RoleBinding or Lease.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
}

/// What the reconciler shares.
struct Context {
    client: kube::Client,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// How reconciling one listener ended (the `result` label of
/// `arc_watchdog_webhook_rbac_ensures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// All three objects are as desired.
    Ok,
    /// One is not arc-watchdog's to change; its watchdog fails open.
    Foreign,
    /// The AutoscalingListener's name cannot make valid object names.
    Invalid,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Foreign => "foreign",
            Self::Invalid => "invalid",
        }
    }
}

/// Applies `plan` to the object `name`; `Ok(false)` when it is foreign.
async fn apply<K>(api: &Api<K>, name: &str, namespace: &str, plan: Plan<K>) -> Result<bool, Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    let err = |action: &'static str| move |source| api_error::<K>(action, namespace, name, source);
    let pp = PostParams {
        field_manager: Some(names::MANAGED_BY_VALUE.to_owned()),
        ..PostParams::default()
    };
    match plan {
        Plan::Keep => Ok(true),
        Plan::Create(obj) => {
            api.create(&pp, &obj).await.map_err(err("create"))?;
            tracing::info!(%namespace, %name, kind = %kind, "created");
            Ok(true)
        }
        Plan::Update(obj) => {
            api.replace(name, &pp, &obj).await.map_err(err("replace"))?;
            tracing::info!(%namespace, %name, kind = %kind, "repaired");
            Ok(true)
        }
        Plan::Foreign(why) => {
            tracing::warn!(
                %namespace,
                %name,
                kind = %kind,
                why = why.as_str(),
                "an object of arc-watchdog's per-listener name is not arc-watchdog's \
                 (no managed-by label, or a changed roleRef); leaving it alone: \
                 this listener's watchdog fails open until it is removed"
            );
            Ok(false)
        }
    }
}

async fn get<K>(api: &Api<K>, name: &str, namespace: &str) -> Result<Option<K>, Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|source| api_error::<K>("get", namespace, name, source))
}

fn api_error<K: kube::Resource<DynamicType = ()>>(
    action: &'static str,
    namespace: &str,
    name: &str,
    source: kube::Error,
) -> Error {
    Error::Api {
        action,
        kind: K::kind(&()).into_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    }
}

async fn reconcile(al: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    if al.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the objects with their owner.
        return Ok(Action::await_change());
    }
    let listener = match Listener::from_object(&al) {
        Ok(l) => l,
        Err(err) => {
            report_invalid(&al, &err);
            ctx.metrics.rbac_ensure(Outcome::Invalid.as_str());
            return Ok(Action::await_change());
        }
    };
    let want = desired::desired(&listener);
    let ns = listener.namespace.as_str();
    let rbac_name = names::rbac_name(&listener.name);
    let lease_name = names::lease_name(&listener.name);

    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), ns);
    let have = get(&roles, &rbac_name, ns).await?;
    let mut ours = apply(
        &roles,
        &rbac_name,
        ns,
        desired::plan_role(&want.role, have, &listener),
    )
    .await?;

    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), ns);
    let have = get(&bindings, &rbac_name, ns).await?;
    let plan = desired::plan_binding(&want.binding, have, &listener);
    ours &= apply(&bindings, &rbac_name, ns, plan).await?;

    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), ns);
    let have = get(&leases, &lease_name, ns).await?;
    let plan = desired::plan_lease(&want.lease, have, &listener);
    if matches!(plan, Plan::Update(_)) {
        tracing::info!(
            namespace = %ns,
            lease = %lease_name,
            listener_uid = %listener.uid,
            "the Lease belongs to an earlier AutoscalingListener of this name; its history starts over"
        );
    }
    ours &= apply(&leases, &lease_name, ns, plan).await?;

    let outcome = if ours { Outcome::Ok } else { Outcome::Foreign };
    ctx.metrics.rbac_ensure(outcome.as_str());
    Ok(Action::requeue(RESYNC))
}

fn report_invalid(al: &DynamicObject, err: &InvalidListener) {
    tracing::warn!(
        namespace = al.metadata.namespace.as_deref().unwrap_or_default(),
        listener = al.metadata.name.as_deref().unwrap_or_default(),
        error = %err,
        "no per-listener RBAC for this AutoscalingListener; its watchdog fails open"
    );
}

fn error_policy(al: Arc<DynamicObject>, err: &Error, ctx: Arc<Context>) -> Action {
    let conflict = matches!(err, Error::Api { source: kube::Error::Api(s), .. } if s.code == 409);
    ctx.metrics
        .rbac_ensure(if conflict { "conflict" } else { "error" });
    if conflict {
        // Another replica (or the watchdog) wrote first: read again.
        tracing::debug!(error = %err, "lost a write race; reconciling again");
    } else {
        tracing::warn!(
            listener = al.metadata.name.as_deref().unwrap_or_default(),
            error = %err,
            "could not reconcile the per-listener RBAC; retrying (the watchdog fails open meanwhile)"
        );
    }
    Action::requeue(RETRY)
}

/// Runs one controller per listener namespace until `cancel`.
pub async fn run(
    client: kube::Client,
    namespaces: Vec<String>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
    });
    let ar = autoscaling_listener_resource();
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        names::MANAGED_BY_LABEL,
        names::MANAGED_BY_VALUE
    ));
    tracing::info!(namespaces = ?namespaces, "reconciling per-listener RBAC from AutoscalingListeners");
    let controllers = namespaces.into_iter().map(|ns| {
        let listeners: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        let cancel = cancel.clone();
        Controller::new_with(listeners, watcher::Config::default(), ar.clone())
            .owns_with(
                Api::<Role>::namespaced(client.clone(), &ns),
                (),
                owned.clone(),
            )
            .owns_with(
                Api::<RoleBinding>::namespaced(client.clone(), &ns),
                (),
                owned.clone(),
            )
            .owns_with(
                Api::<Lease>::namespaced(client.clone(), &ns),
                (),
                owned.clone(),
            )
            .trigger_backoff(WatchBackoff::default())
            .graceful_shutdown_on(async move { cancel.cancelled().await })
            .run(reconcile, error_policy, Arc::clone(&ctx))
            .for_each(|result| async move {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "per-listener RBAC controller");
                }
            })
    });
    futures::future::join_all(controllers).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_double_to_a_short_cap_and_reset() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let first: Vec<Duration> = b.by_ref().take(6).collect();
        assert_eq!(first[0], WATCH_RETRY_MIN);
        assert_eq!(first[1], WATCH_RETRY_MIN * 2);
        assert_eq!(first[5], WATCH_RETRY_MAX);
        b.reset();
        assert_eq!(b.next(), Some(WATCH_RETRY_MIN));
    }

    #[test]
    fn the_listener_resource_is_arcs() {
        let ar = autoscaling_listener_resource();
        assert_eq!(ar.api_version, "actions.github.com/v1alpha1");
        assert_eq!(ar.plural, "autoscalinglisteners");
        assert_eq!(ar.kind, "AutoscalingListener");
    }
}
