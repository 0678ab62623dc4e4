//! Filling the control plane: ARC-shaped listeners (ServiceAccount,
//! AutoscalingListener, listener pod through admission) created with
//! bounded concurrency, and the wait, by watches, until every per-listener
//! object the webhook's controller keeps exists.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arc_watchdog_core::names;
use arc_watchdog_tests::control_plane::{create_listener, listener_name, watchdog_container};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;

/// What filling the control plane took.
#[derive(Debug, Clone)]
pub struct Populated {
    /// From the first create until the last listener pod was stored.
    pub created: Duration,
    /// From the first create until every per-listener object existed.
    pub objects: Duration,
    /// Per-listener objects waited for.
    pub object_count: usize,
    /// Listener pods stored with the watchdog injected.
    pub injected: usize,
}

/// The scale set of listener `i`.
fn scale_set(i: usize) -> String {
    format!("scale-{i:04}")
}

/// Creates `count` listeners in `namespace`, `concurrency` at a time, and
/// waits (at most `timeout` in all) until the Role, RoleBinding and Lease
/// of each exist. Fails when a pod was admitted without the watchdog.
pub async fn populate(
    client: &Client,
    namespace: &str,
    count: usize,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Populated> {
    let listeners: Vec<String> = (0..count).map(|i| listener_name(&scale_set(i))).collect();
    let rbac: BTreeSet<String> = listeners.iter().map(|l| names::rbac_name(l)).collect();
    let leases: BTreeSet<String> = listeners.iter().map(|l| names::lease_name(l)).collect();
    let object_count = rbac.len() * 2 + leases.len();

    let start = Instant::now();
    // The watches start with the creates (a watch lists first, so nothing
    // made before it is missed), each on its own task.
    let roles = tokio::spawn(await_all(
        Api::<Role>::namespaced(client.clone(), namespace),
        rbac.clone(),
    ));
    let bindings = tokio::spawn(await_all(
        Api::<RoleBinding>::namespaced(client.clone(), namespace),
        rbac,
    ));
    let lease_watch = tokio::spawn(await_all(
        Api::<Lease>::namespaced(client.clone(), namespace),
        leases,
    ));
    let work = async {
        let injected = futures::stream::iter(0..count)
            .map(|i| {
                let client = client.clone();
                async move { create_listener(&client, namespace, &scale_set(i), |_| {}).await }
            })
            .buffer_unordered(concurrency.max(1))
            .try_fold(0_usize, |injected, pod| async move {
                Ok(injected + usize::from(watchdog_container(&pod).is_some()))
            })
            .await?;
        let created = start.elapsed();
        for (kind, watch) in [
            ("Roles", roles),
            ("RoleBindings", bindings),
            ("Leases", lease_watch),
        ] {
            watch
                .await
                .with_context(|| format!("the watch of {kind} panicked"))?
                .with_context(|| format!("waiting for the per-listener {kind}"))?;
        }
        anyhow::Ok((created, start.elapsed(), injected))
    };
    let (created, objects, injected) = tokio::time::timeout(timeout, work).await.with_context(
        || {
            format!(
                "{count} listeners and their {object_count} objects not there within {timeout:?}"
            )
        },
    )??;
    if injected != count {
        bail!(
            "only {injected} of {count} listener pods were admitted with the watchdog \
             (failurePolicy Ignore admits the others unchanged)"
        );
    }
    Ok(Populated {
        created,
        objects,
        object_count,
        injected,
    })
}

/// Watches `api` (objects labelled managed-by arc-watchdog) until every
/// name in `missing` has been seen.
async fn await_all<K>(api: Api<K>, mut missing: BTreeSet<String>) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let selector = format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE);
    let mut seen = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    while !missing.is_empty() {
        let object = seen
            .try_next()
            .await?
            .context("the watch ended before every object was seen")?;
        missing.remove(&object.name_any());
    }
    Ok(())
}
