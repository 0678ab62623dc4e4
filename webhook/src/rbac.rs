//! Per-listener RBAC: a Role and RoleBinding that let the watchdog read,
//! watch and evict **its own pod** and update **its own Lease**, and the
//! Lease itself (so the watchdog never needs `create` on leases).
//!
//! The objects are built by pure functions ([`role_rules`], [`desired`]);
//! [`RbacKeeper::ensure`] is the thin API layer. It runs while a listener
//! pod is admitted, bounded in time; a failure is logged and counted and
//! never fails the admission (the watchdog fails open without its rights).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_watchdog::names;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use tokio::sync::Mutex;

use crate::review::RbacTarget;

/// Default name of the MutatingWebhookConfiguration that owns the objects.
pub const DEFAULT_WEBHOOK_CONFIG_NAME: &str = "arc-watchdog";

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: Option<&str>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        resource_names: names.map(|n| vec![n.to_owned()]),
        non_resource_urls: None,
    }
}

/// The rules of the Role for the watchdog of listener pod `pod`.
pub fn role_rules(pod: &str) -> Vec<PolicyRule> {
    let lease = names::lease_name(pod);
    vec![
        rule("", &["pods"], &["get", "list", "watch"], Some(pod)),
        rule("", &["pods/log"], &["get"], Some(pod)),
        rule("", &["pods/eviction"], &["create"], Some(pod)),
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "update"],
            Some(&lease),
        ),
        rule("", &["events"], &["create", "patch"], None),
        rule("events.k8s.io", &["events"], &["create", "patch"], None),
    ]
}

/// The owner of everything the keeper creates: the webhook's own
/// cluster-scoped configuration, so deleting it garbage-collects them.
pub fn owner_reference(webhook_config_name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".to_owned(),
        kind: "MutatingWebhookConfiguration".to_owned(),
        name: webhook_config_name.to_owned(),
        uid: uid.to_owned(),
        // Not a controller reference (the AutoscalingListener's is not on
        // these objects either); no blockOwnerDeletion, which would need
        // update rights on the configuration's finalizers.
        controller: None,
        block_owner_deletion: None,
    }
}

/// The three objects for one listener pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Role `arc-watchdog-<pod>`.
    pub role: Role,
    /// RoleBinding `arc-watchdog-<pod>` to the pod's service account.
    pub binding: RoleBinding,
    /// Lease `arc-watchdog-<pod>`.
    pub lease: Lease,
}

fn meta(name: String, namespace: &str, owner: Option<&OwnerReference>) -> ObjectMeta {
    let mut labels = BTreeMap::new();
    labels.insert(
        names::MANAGED_BY_LABEL.to_owned(),
        names::MANAGED_BY_VALUE.to_owned(),
    );
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..ObjectMeta::default()
    }
}

/// Builds the Role, RoleBinding and Lease for `target`.
pub fn desired(target: &RbacTarget, owner: Option<&OwnerReference>) -> Desired {
    let name = names::rbac_name(&target.pod_name);
    let role = Role {
        metadata: meta(name.clone(), &target.namespace, owner),
        rules: Some(role_rules(&target.pod_name)),
    };
    let binding = RoleBinding {
        metadata: meta(name.clone(), &target.namespace, owner),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: target.service_account.clone(),
            namespace: Some(target.namespace.clone()),
            api_group: None,
        }]),
    };
    let lease = Lease {
        metadata: meta(
            names::lease_name(&target.pod_name),
            &target.namespace,
            owner,
        ),
        spec: Some(LeaseSpec::default()),
    };
    Desired {
        role,
        binding,
        lease,
    }
}

/// How one ensure ended (the `result` label of the rbac metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureResult {
    /// All three objects exist as desired, owned by the configuration.
    Ok,
    /// All three exist, but the configuration could not be found, so they
    /// carry no owner (they are still labelled managed-by arc-watchdog).
    NoOwner,
    /// A RoleBinding of arc-watchdog's name exists with another `roleRef`
    /// (made by someone else): it is left alone, and the watchdog of that
    /// listener fails open for lack of rights.
    Foreign,
    /// An API call failed.
    Error,
    /// The time budget ran out (the work goes on in the background).
    Timeout,
}

impl EnsureResult {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NoOwner => "no_owner",
            Self::Foreign => "foreign",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

/// Puts the managed-by label and `owner` on an existing object that lacks
/// them (created before the configuration existed, or by hand). Returns
/// whether anything changed. Other labels and owners are kept.
pub fn adopt(meta: &mut ObjectMeta, owner: Option<&OwnerReference>) -> bool {
    let mut changed = false;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    if labels.get(names::MANAGED_BY_LABEL).map(String::as_str) != Some(names::MANAGED_BY_VALUE) {
        labels.insert(
            names::MANAGED_BY_LABEL.to_owned(),
            names::MANAGED_BY_VALUE.to_owned(),
        );
        changed = true;
    }
    if let Some(owner) = owner {
        let refs = meta.owner_references.get_or_insert_with(Vec::new);
        if !refs.iter().any(|r| r.uid == owner.uid) {
            refs.push(owner.clone());
            changed = true;
        }
    }
    changed
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// The MutatingWebhookConfiguration that owns every object arc-watchdog
/// creates at run time (per-listener RBAC and Lease, the coverage Events).
/// Looked up until found, since it may be registered after the webhook
/// starts, then remembered; one for the whole webhook.
pub struct ConfigOwner {
    client: kube::Client,
    name: String,
    uid: Mutex<Option<String>>,
}

impl std::fmt::Debug for ConfigOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigOwner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ConfigOwner {
    /// The configuration `name`, read with `client`.
    pub fn new(client: kube::Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
            uid: Mutex::new(None),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner reference, from memory or read now; `Ok(None)` only for a
    /// configuration without a uid. The caller decides how loudly a failed
    /// read is logged (the object is then created without an owner).
    pub async fn reference(&self) -> Result<Option<OwnerReference>, kube::Error> {
        let mut cached = self.uid.lock().await;
        if cached.is_none() {
            let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
            *cached = api.get(&self.name).await?.metadata.uid;
        }
        Ok(cached
            .as_deref()
            .map(|uid| owner_reference(&self.name, uid)))
    }
}

/// Creates and repairs the per-listener objects through the API.
pub struct RbacKeeper {
    client: kube::Client,
    owner: Arc<ConfigOwner>,
}

impl std::fmt::Debug for RbacKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbacKeeper")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl RbacKeeper {
    /// A keeper using `client`, owning objects by `owner`.
    pub fn new(client: kube::Client, owner: Arc<ConfigOwner>) -> Self {
        Self { client, owner }
    }

    async fn owner(&self) -> Option<OwnerReference> {
        self.owner.reference().await.unwrap_or_else(|err| {
            tracing::warn!(
                error = %err,
                webhook_config = %self.owner.name(),
                "cannot read the webhook configuration; per-listener RBAC is created without an owner"
            );
            None
        })
    }

    /// Ensures Role, RoleBinding and Lease for `target`, idempotently.
    pub async fn ensure(&self, target: &RbacTarget) -> Result<EnsureResult, kube::Error> {
        let owner = self.owner().await;
        let want = desired(target, owner.as_ref());
        let ns = target.namespace.as_str();
        let pp = PostParams::default();

        let roles: Api<Role> = Api::namespaced(self.client.clone(), ns);
        match roles.create(&pp, &want.role).await {
            Ok(_) => {}
            Err(err) if is_conflict(&err) => {
                let mut have = roles.get(&names::rbac_name(&target.pod_name)).await?;
                let mut changed = adopt(&mut have.metadata, owner.as_ref());
                if have.rules != want.role.rules {
                    have.rules = want.role.rules.clone();
                    changed = true;
                }
                if changed {
                    roles
                        .replace(&names::rbac_name(&target.pod_name), &pp, &have)
                        .await?;
                }
            }
            Err(err) => return Err(err),
        }

        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), ns);
        let name = names::rbac_name(&target.pod_name);
        let mut foreign = false;
        match bindings.create(&pp, &want.binding).await {
            Ok(_) => {}
            Err(err) if is_conflict(&err) => {
                let mut have = bindings.get(&name).await?;
                if have.role_ref != want.binding.role_ref {
                    // roleRef is immutable and ours always names the Role of
                    // the same name: a binding with another roleRef was made
                    // by someone else. Replacing it would need `delete` on
                    // every RoleBinding of the namespace, a right the webhook
                    // must not hold, so leave it and say so.
                    tracing::warn!(
                        namespace = %ns,
                        binding = %name,
                        role_ref = %have.role_ref.name,
                        "a RoleBinding of arc-watchdog's name refers to another role; leaving it alone"
                    );
                    foreign = true;
                } else {
                    let mut changed = adopt(&mut have.metadata, owner.as_ref());
                    if have.subjects != want.binding.subjects {
                        have.subjects = want.binding.subjects.clone();
                        changed = true;
                    }
                    if changed {
                        bindings.replace(&name, &pp, &have).await?;
                    }
                }
            }
            Err(err) => return Err(err),
        }

        let leases: Api<Lease> = Api::namespaced(self.client.clone(), ns);
        match leases.create(&pp, &want.lease).await {
            // An existing Lease holds the watchdog's history: never touch it.
            Ok(_) => {}
            Err(err) if is_conflict(&err) => {}
            Err(err) => return Err(err),
        }

        Ok(if foreign {
            EnsureResult::Foreign
        } else if owner.is_some() {
            EnsureResult::Ok
        } else {
            EnsureResult::NoOwner
        })
    }

    /// [`Self::ensure`] within `budget`. The work runs in its own task, so
    /// when the budget runs out the admission goes on and the objects are
    /// still created shortly after.
    pub async fn ensure_within(
        self: &Arc<Self>,
        target: RbacTarget,
        budget: Duration,
    ) -> EnsureResult {
        let keeper = Arc::clone(self);
        let task_target = target.clone();
        let task = tokio::spawn(async move {
            let result = keeper.ensure(&task_target).await;
            match &result {
                Ok(r) => tracing::debug!(
                    namespace = %task_target.namespace,
                    pod = %task_target.pod_name,
                    result = r.as_str(),
                    "per-listener RBAC ensured"
                ),
                Err(err) => tracing::warn!(
                    namespace = %task_target.namespace,
                    pod = %task_target.pod_name,
                    error = %err,
                    "could not ensure per-listener RBAC; the watchdog will fail open"
                ),
            }
            result
        });
        match tokio::time::timeout(budget, task).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(_))) | Ok(Err(_)) => EnsureResult::Error,
            Err(_) => {
                tracing::warn!(
                    namespace = %target.namespace,
                    pod = %target.pod_name,
                    budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
                    "per-listener RBAC not ensured within its time budget; continuing in the background"
                );
                EnsureResult::Timeout
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_grant_only_own_pod_and_lease() {
        let rules = serde_json::to_value(role_rules("set-abc-listener")).unwrap();
        assert_eq!(
            rules,
            json!([
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"], "resourceNames": ["set-abc-listener"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"], "resourceNames": ["set-abc-listener"]},
                {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"], "resourceNames": ["set-abc-listener"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"], "resourceNames": ["arc-watchdog-set-abc-listener"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            ])
        );
    }

    #[test]
    fn adopt_adds_label_and_owner_once_and_keeps_the_rest() {
        let owner = owner_reference("arc-watchdog", "uid-1");
        let other = owner_reference("someone-else", "uid-2");
        let mut meta = ObjectMeta {
            labels: Some([("team".to_owned(), "ci".to_owned())].into()),
            owner_references: Some(vec![other.clone()]),
            ..ObjectMeta::default()
        };
        assert!(adopt(&mut meta, Some(&owner)));
        assert_eq!(
            meta.owner_references.as_ref().unwrap(),
            &vec![other, owner.clone()]
        );
        assert_eq!(meta.labels.as_ref().unwrap().len(), 2);
        assert!(
            !adopt(&mut meta, Some(&owner)),
            "second adopt changes nothing"
        );
        let mut bare = ObjectMeta::default();
        assert!(adopt(&mut bare, None));
        assert!(bare.owner_references.as_ref().is_none_or(Vec::is_empty));
    }

    #[test]
    fn desired_objects_are_named_labelled_and_owned() {
        let target = RbacTarget {
            namespace: "arc-systems".into(),
            pod_name: "set-abc-listener".into(),
            service_account: "set-abc-listener".into(),
        };
        let owner = owner_reference("arc-watchdog", "uid-1");
        let d = desired(&target, Some(&owner));
        for m in [&d.role.metadata, &d.binding.metadata, &d.lease.metadata] {
            assert_eq!(m.name.as_deref(), Some("arc-watchdog-set-abc-listener"));
            assert_eq!(m.namespace.as_deref(), Some("arc-systems"));
            assert_eq!(
                m.labels
                    .as_ref()
                    .unwrap()
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str),
                Some("arc-watchdog")
            );
            let refs = m.owner_references.as_ref().unwrap();
            assert_eq!(refs.len(), 1);
            assert_eq!(refs[0].kind, "MutatingWebhookConfiguration");
            assert_eq!(refs[0].uid, "uid-1");
            assert_eq!(refs[0].controller, None);
        }
        assert_eq!(
            serde_json::to_value(&d.binding).unwrap()["subjects"],
            json!([{"kind": "ServiceAccount", "name": "set-abc-listener", "namespace": "arc-systems"}])
        );
        assert_eq!(d.binding.role_ref.name, "arc-watchdog-set-abc-listener");
        assert_eq!(d.binding.role_ref.kind, "Role");
        let unowned = desired(&target, None);
        assert!(unowned.role.metadata.owner_references.is_none());
    }
}
