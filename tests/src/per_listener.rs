//! The per-listener Role, RoleBinding and Lease that the webhook's
//! controller keeps for every AutoscalingListener: waiting for them (they
//! follow the listener by a watch event, not by the pod's admission) and
//! reading them.

use std::time::Duration;

use anyhow::{Context as _, Result};
use arc_watchdog::names;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::runtime::wait::await_condition;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// How long the controller may take for a new listener: usually well
/// under a second; right after an API server outage its watches relist
/// first (pauses of at most 5 s between tries), on a busy machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The three objects of one listener.
#[derive(Debug, Clone)]
pub struct Objects {
    /// Role `arc-watchdog.<listener>`.
    pub role: Role,
    /// RoleBinding `arc-watchdog.<listener>`.
    pub binding: RoleBinding,
    /// Lease `arc-watchdog.<listener>`.
    pub lease: Lease,
}

/// Waits until the object `name` exists and is owned by the
/// AutoscalingListener with `owner_uid`.
async fn wait_owned<K>(client: &Client, namespace: &str, name: &str, owner_uid: &str) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Send
        + 'static,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kind = K::kind(&()).into_owned();
    let uid = owner_uid.to_owned();
    let owned = move |o: Option<&K>| {
        o.is_some_and(|o| {
            o.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == names::AUTOSCALING_LISTENER_KIND && r.uid == uid)
        })
    };
    let found = tokio::time::timeout(DEADLINE, await_condition(api, name, owned))
        .await
        .with_context(|| {
            format!(
                "{kind} {namespace}/{name} not owned by listener {owner_uid} within {DEADLINE:?}"
            )
        })?
        .with_context(|| format!("watching {kind} {namespace}/{name}"))?;
    found.with_context(|| format!("{kind} {namespace}/{name} vanished"))
}

/// Waits until all three objects of `listener` exist and are owned by the
/// AutoscalingListener with `owner_uid` (objects of an earlier listener of
/// the same name are moved over by the controller), and returns them.
pub async fn wait_for_objects(
    client: &Client,
    namespace: &str,
    listener: &str,
    owner_uid: &str,
) -> Result<Objects> {
    let rbac = names::rbac_name(listener);
    Ok(Objects {
        role: wait_owned(client, namespace, &rbac, owner_uid).await?,
        binding: wait_owned(client, namespace, &rbac, owner_uid).await?,
        lease: wait_owned(client, namespace, &names::lease_name(listener), owner_uid).await?,
    })
}

/// [`wait_for_objects`] for the AutoscalingListener that owns `pod`.
pub async fn wait_for_pod(
    client: &Client,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<Objects> {
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .context("the pod has no namespace")?;
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == names::AUTOSCALING_LISTENER_KIND)
        .context("the pod has no AutoscalingListener owner")?;
    wait_for_objects(client, namespace, &owner.name, &owner.uid).await
}
