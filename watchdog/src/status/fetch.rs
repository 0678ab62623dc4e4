//! Reads what `status` judges, read-only, with whatever rights the caller
//! has: a list the API server forbids (403) becomes a lacked right in the
//! report, never a failure.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Client, ResourceExt as _};
use serde::de::DeserializeOwned;

use super::assess::Inputs;
use crate::names;

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Runner namespace of the AutoscalingRunnerSets; `None`: all.
    pub namespace: Option<String>,
    /// ARC's controller namespace (listeners, their pods, arc-watchdog's
    /// Leases); `None`: wherever the AutoscalingListeners are.
    pub listener_namespace: Option<String>,
}

fn arc_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("actions.github.com", "v1alpha1", kind),
        plural,
    )
}

fn where_(namespace: Option<&str>) -> String {
    namespace.map_or_else(|| "all namespaces".to_owned(), |ns| ns.to_owned())
}

/// Lists with `api`; `Ok(None)` and a lacked right noted when forbidden.
async fn list<K>(
    api: Api<K>,
    params: &ListParams,
    what: &str,
    namespace: Option<&str>,
    lacked: &mut Vec<String>,
) -> Result<Option<Vec<K>>>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list(params).await {
        Ok(list) => Ok(Some(list.items)),
        Err(kube::Error::Api(s)) if s.code == 403 => {
            lacked.push(format!("list {what} in {}", where_(namespace)));
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("listing {what} in {}", where_(namespace))),
    }
}

fn dynamic_api(client: &Client, namespace: Option<&str>, ar: &ApiResource) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Lists `K` in each of `namespaces` (all namespaces when `None`),
/// concatenated; `None` if any list was forbidden.
async fn list_in<K>(
    client: &Client,
    namespaces: Option<&BTreeSet<String>>,
    params: &ListParams,
    what: &str,
    lacked: &mut Vec<String>,
) -> Result<Option<Vec<K>>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let Some(namespaces) = namespaces else {
        return list(Api::<K>::all(client.clone()), params, what, None, lacked).await;
    };
    let mut all = Some(Vec::new());
    for ns in namespaces {
        let api = Api::<K>::namespaced(client.clone(), ns);
        match list(api, params, what, Some(ns), lacked).await? {
            Some(items) => {
                if let Some(all) = all.as_mut() {
                    all.extend(items);
                }
            }
            None => all = None,
        }
    }
    Ok(all)
}

/// Reads the AutoscalingRunnerSets, AutoscalingListeners, listener pods,
/// arc-watchdog's Leases and, for listener pods being deleted, their nodes.
pub async fn fetch(client: &Client, scope: &Scope) -> Result<Inputs> {
    let mut lacked = Vec::new();
    let all = ListParams::default();
    let ns = scope.namespace.as_deref();
    let runner_sets = list(
        dynamic_api(
            client,
            ns,
            &arc_resource("AutoscalingRunnerSet", "autoscalingrunnersets"),
        ),
        &all,
        "autoscalingrunnersets.actions.github.com",
        ns,
        &mut lacked,
    )
    .await?;
    let lns = scope.listener_namespace.as_deref();
    let listeners = list(
        dynamic_api(
            client,
            lns,
            &arc_resource("AutoscalingListener", "autoscalinglisteners"),
        ),
        &all,
        "autoscalinglisteners.actions.github.com",
        lns,
        &mut lacked,
    )
    .await?;
    // Pods and Leases live where the listeners are; asking only there keeps
    // the rights needed to those namespaces.
    let namespaces: Option<BTreeSet<String>> = match (lns, &listeners) {
        (Some(l), _) => Some([l.to_owned()].into()),
        (None, Some(listeners)) => Some(listeners.iter().filter_map(|l| l.namespace()).collect()),
        (None, None) => None,
    };
    let pod_params = ListParams::default().labels(&format!(
        "{}={}",
        names::LISTENER_COMPONENT_LABEL,
        names::LISTENER_COMPONENT_VALUE
    ));
    let pods: Option<Vec<Pod>> = list_in(
        client,
        namespaces.as_ref(),
        &pod_params,
        "pods",
        &mut lacked,
    )
    .await?;
    let lease_params = ListParams::default().labels(&format!(
        "{}={}",
        names::MANAGED_BY_LABEL,
        names::MANAGED_BY_VALUE
    ));
    let leases: Option<Vec<Lease>> = list_in(
        client,
        namespaces.as_ref(),
        &lease_params,
        "leases.coordination.k8s.io",
        &mut lacked,
    )
    .await?;

    // Only a pod stuck Terminating needs its node's readiness.
    let mut not_ready_nodes = BTreeSet::new();
    let stuck: BTreeSet<String> = pods
        .iter()
        .flatten()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    let nodes: Api<Node> = Api::all(client.clone());
    for name in stuck {
        match nodes.get_opt(&name).await {
            Ok(Some(node)) if !node_ready(&node) => {
                not_ready_nodes.insert(node.name_any());
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 403 => {
                lacked.push(format!("get nodes ({name})"));
            }
            Err(e) => return Err(e).with_context(|| format!("reading node {name}")),
        }
    }
    Ok(Inputs {
        runner_sets,
        listeners,
        pods,
        leases,
        not_ready_nodes,
        lacked_rights: lacked,
    })
}

/// Whether the node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
