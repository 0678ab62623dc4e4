//! What a listener's Role, RoleBinding and Lease should be, and what to do
//! with the ones that exist: pure functions of the AutoscalingListener and
//! the stored objects. [`super::controller`] is the thin API layer.
//!
//! Three rules keep the controller from doing harm:
//! - only an object labelled `app.kubernetes.io/managed-by: arc-watchdog` is
//!   ever changed; anything else of the same name is reported and left alone;
//! - names come from an AutoscalingListener the API server stored, checked
//!   again here before they reach an API path;
//! - a Lease holds the history of one AutoscalingListener (by UID): one left
//!   by an earlier listener of the same name starts over empty.

use std::collections::BTreeMap;

use arc_watchdog_core::names;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::DynamicObject;

/// Longest object name the API server accepts (DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;
/// Longest namespace name (DNS-1123 label).
const MAX_NAMESPACE_LEN: usize = 63;

/// The AutoscalingListener the objects belong to. Its pod and its
/// ServiceAccount carry its name in its namespace: ARC's
/// `newScaleSetListenerPod` names the pod after the listener and runs it as
/// the ServiceAccount it creates for the listener (0.8.1 to 0.14.2; a
/// `listenerTemplate` cannot change either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Namespace of the listener, its pod and its ServiceAccount.
    pub namespace: String,
    /// Name of the listener, its pod and its ServiceAccount.
    pub name: String,
    /// UID of the AutoscalingListener: the owner of the objects.
    pub uid: String,
}

/// Why an AutoscalingListener gets no objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidListener {
    /// A field the API server always sets is missing.
    #[error("the AutoscalingListener has no {0}")]
    Missing(&'static str),
    /// The name or namespace is not one Kubernetes accepts, or the
    /// per-listener names built from it would be too long.
    #[error("{what} {value:?} is not a valid Kubernetes name{why}")]
    Name {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: String,
        /// More detail, starting with "; " or empty.
        why: String,
    },
}

fn is_dns_subdomain(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

impl Listener {
    /// The listener behind a stored AutoscalingListener, with its name and
    /// namespace checked.
    pub fn from_object(obj: &DynamicObject) -> Result<Self, InvalidListener> {
        let meta = &obj.metadata;
        let name = meta.name.clone().ok_or(InvalidListener::Missing("name"))?;
        let namespace = meta
            .namespace
            .clone()
            .ok_or(InvalidListener::Missing("namespace"))?;
        let uid = meta
            .uid
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or(InvalidListener::Missing("uid"))?;
        Self::new(namespace, name, uid)
    }

    /// A listener from its parts, checked as [`Self::from_object`] does.
    pub fn new(namespace: String, name: String, uid: String) -> Result<Self, InvalidListener> {
        if !is_dns_subdomain(&namespace, MAX_NAMESPACE_LEN) || namespace.contains('.') {
            return Err(InvalidListener::Name {
                what: "namespace",
                value: namespace,
                why: String::new(),
            });
        }
        let longest = names::rbac_name(&name)
            .len()
            .max(names::lease_name(&name).len());
        if !is_dns_subdomain(&name, MAX_NAME_LEN) || longest > MAX_NAME_LEN {
            let why = if is_dns_subdomain(&name, MAX_NAME_LEN) {
                format!(
                    "; {longest} characters with the prefix {:?}",
                    names::PER_LISTENER_PREFIX
                )
            } else {
                String::new()
            };
            return Err(InvalidListener::Name {
                what: "name",
                value: name,
                why,
            });
        }
        Ok(Self {
            namespace,
            name,
            uid,
        })
    }

    /// The owner reference every per-listener object carries: when the
    /// scale set (and with it the AutoscalingListener) is deleted, the
    /// garbage collector removes them.
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: names::AUTOSCALING_LISTENER_API_VERSION.to_owned(),
            kind: names::AUTOSCALING_LISTENER_KIND.to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            // ARC's controller controls the listener, not these objects; and
            // blockOwnerDeletion would need rights on the listener's
            // finalizers.
            controller: None,
            block_owner_deletion: None,
        }
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: Option<&str>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        resource_names: names.map(|n| vec![n.to_owned()]),
        non_resource_urls: None,
    }
}

/// The rules of the Role for the watchdog of listener pod `pod`: its own
/// pod, log, eviction and Lease, and Events.
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

/// The three objects of one listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Role `arc-watchdog.<listener>`.
    pub role: Role,
    /// RoleBinding `arc-watchdog.<listener>` to the listener's ServiceAccount.
    pub binding: RoleBinding,
    /// Lease `arc-watchdog.<listener>`, created empty.
    pub lease: Lease,
}

/// The labels every per-listener object carries.
pub fn labels(listener: &Listener) -> BTreeMap<String, String> {
    [
        (names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE),
        (names::LISTENER_LABEL, listener.name.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn meta(name: String, listener: &Listener) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(listener.namespace.clone()),
        labels: Some(labels(listener)),
        owner_references: Some(vec![listener.owner_reference()]),
        ..ObjectMeta::default()
    }
}

/// Builds the Role, RoleBinding and Lease of `listener`.
pub fn desired(listener: &Listener) -> Desired {
    let name = names::rbac_name(&listener.name);
    let role = Role {
        metadata: meta(name.clone(), listener),
        rules: Some(role_rules(&listener.name)),
    };
    let binding = RoleBinding {
        metadata: meta(name.clone(), listener),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: listener.name.clone(),
            namespace: Some(listener.namespace.clone()),
            api_group: None,
        }]),
    };
    let lease = Lease {
        metadata: meta(names::lease_name(&listener.name), listener),
        spec: Some(LeaseSpec::default()),
    };
    Desired {
        role,
        binding,
        lease,
    }
}

/// Why an existing object is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// It lacks arc-watchdog's managed-by label: someone else's.
    NotManaged,
    /// A RoleBinding of ours whose `roleRef` (immutable) names another
    /// Role: replacing it would need `delete` on RoleBindings, a right the
    /// webhook does not hold.
    RoleRefChanged,
}

impl Foreign {
    /// Metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotManaged => "not_managed",
            Self::RoleRefChanged => "role_ref_changed",
        }
    }
}

/// What to do with one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan<K> {
    /// It does not exist: create it.
    Create(K),
    /// It is ours and differs: replace it with this (the stored object's
    /// resourceVersion kept, so a concurrent change makes it fail and retry).
    Update(K),
    /// It is as it should be.
    Keep,
    /// It is not ours to change.
    Foreign(Foreign),
}

/// Whether arc-watchdog manages the object.
pub fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(names::MANAGED_BY_LABEL))
        .is_some_and(|v| v == names::MANAGED_BY_VALUE)
}

fn is_listener_ref(r: &OwnerReference) -> bool {
    r.kind == names::AUTOSCALING_LISTENER_KIND
        && r.api_version == names::AUTOSCALING_LISTENER_API_VERSION
}

/// Whether the object belongs to this very AutoscalingListener.
pub fn owned_by(meta: &ObjectMeta, listener: &Listener) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| is_listener_ref(r) && r.uid == listener.uid)
}

/// `have`'s metadata made ours for `listener`: our labels set (others
/// kept), owner references to other AutoscalingListeners replaced by this
/// one's (other owners kept). Returns whether anything changed.
fn claim(have: &mut ObjectMeta, listener: &Listener) -> bool {
    let mut changed = false;
    let labels = have.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in self::labels(listener) {
        if labels.get(&k) != Some(&v) {
            labels.insert(k, v);
            changed = true;
        }
    }
    if !owned_by(have, listener) {
        let refs = have.owner_references.get_or_insert_with(Vec::new);
        refs.retain(|r| !is_listener_ref(r));
        refs.push(listener.owner_reference());
        changed = true;
    }
    changed
}

/// The Role: created, or its rules and ownership repaired.
pub fn plan_role(want: &Role, have: Option<Role>, listener: &Listener) -> Plan<Role> {
    let Some(mut have) = have else {
        return Plan::Create(want.clone());
    };
    if !is_managed(&have.metadata) {
        return Plan::Foreign(Foreign::NotManaged);
    }
    let mut changed = claim(&mut have.metadata, listener);
    if have.rules != want.rules {
        have.rules.clone_from(&want.rules);
        changed = true;
    }
    if changed {
        Plan::Update(have)
    } else {
        Plan::Keep
    }
}

/// The RoleBinding: created, or its subjects and ownership repaired.
pub fn plan_binding(
    want: &RoleBinding,
    have: Option<RoleBinding>,
    listener: &Listener,
) -> Plan<RoleBinding> {
    let Some(mut have) = have else {
        return Plan::Create(want.clone());
    };
    if !is_managed(&have.metadata) {
        return Plan::Foreign(Foreign::NotManaged);
    }
    if have.role_ref != want.role_ref {
        return Plan::Foreign(Foreign::RoleRefChanged);
    }
    let mut changed = claim(&mut have.metadata, listener);
    if have.subjects != want.subjects {
        have.subjects.clone_from(&want.subjects);
        changed = true;
    }
    if changed {
        Plan::Update(have)
    } else {
        Plan::Keep
    }
}

/// The Lease: created; one of an earlier AutoscalingListener of the same
/// name starts over empty (its history belongs to that listener); the
/// current listener's is never touched (the watchdog writes it).
pub fn plan_lease(want: &Lease, have: Option<Lease>, listener: &Listener) -> Plan<Lease> {
    let Some(have) = have else {
        return Plan::Create(want.clone());
    };
    if !is_managed(&have.metadata) {
        return Plan::Foreign(Foreign::NotManaged);
    }
    if owned_by(&have.metadata, listener) {
        return Plan::Keep;
    }
    let mut fresh = want.clone();
    fresh.metadata.resource_version = have.metadata.resource_version;
    Plan::Update(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn listener(uid: &str) -> Listener {
        Listener::new("arc-systems".into(), "set-abc-listener".into(), uid.into()).unwrap()
    }

    fn al(name: &str, namespace: &str, uid: Option<&str>) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingListener",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
        }))
        .unwrap()
    }

    #[test]
    fn rules_grant_only_own_pod_and_lease() {
        let rules = serde_json::to_value(role_rules("set-abc-listener")).unwrap();
        assert_eq!(
            rules,
            json!([
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"], "resourceNames": ["set-abc-listener"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"], "resourceNames": ["set-abc-listener"]},
                {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"], "resourceNames": ["set-abc-listener"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"], "resourceNames": ["arc-watchdog.set-abc-listener"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            ])
        );
    }

    #[test]
    fn desired_objects_are_named_labelled_and_owned_by_the_listener() {
        let d = desired(&listener("uid-1"));
        for m in [&d.role.metadata, &d.binding.metadata, &d.lease.metadata] {
            assert_eq!(m.name.as_deref(), Some("arc-watchdog.set-abc-listener"));
            assert_eq!(m.namespace.as_deref(), Some("arc-systems"));
            let labels = m.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/managed-by"], "arc-watchdog");
            assert_eq!(labels["arc-watchdog.dev/listener"], "set-abc-listener");
            let refs = m.owner_references.as_ref().unwrap();
            assert_eq!(refs.len(), 1);
            assert_eq!(refs[0].kind, "AutoscalingListener");
            assert_eq!(refs[0].api_version, "actions.github.com/v1alpha1");
            assert_eq!(refs[0].name, "set-abc-listener");
            assert_eq!(refs[0].uid, "uid-1");
            assert_eq!(refs[0].controller, None);
            assert_eq!(refs[0].block_owner_deletion, None);
        }
        assert_eq!(
            serde_json::to_value(&d.binding).unwrap()["subjects"],
            json!([{"kind": "ServiceAccount", "name": "set-abc-listener", "namespace": "arc-systems"}])
        );
        assert_eq!(d.binding.role_ref.name, "arc-watchdog.set-abc-listener");
        assert_eq!(d.binding.role_ref.kind, "Role");
        assert!(d.lease.metadata.annotations.is_none());
    }

    #[test]
    fn listeners_with_names_kubernetes_would_refuse_get_nothing() {
        assert_eq!(
            Listener::from_object(&al("set-abc-listener", "arc-systems", Some("u"))),
            Ok(listener("u"))
        );
        assert_eq!(
            Listener::from_object(&al("x", "arc-systems", None)),
            Err(InvalidListener::Missing("uid"))
        );
        for (name, ns) in [
            ("../webhook", "arc-systems"),
            ("a/b", "arc-systems"),
            ("Upper", "arc-systems"),
            ("-lead", "arc-systems"),
            ("trail-", "arc-systems"),
            ("a..b", "arc-systems"),
            ("", "arc-systems"),
            ("ok", "bad/ns"),
            ("ok", "a.b"),
            ("ok", ""),
        ] {
            let err = Listener::new(ns.into(), name.into(), "u".into()).unwrap_err();
            assert!(
                matches!(err, InvalidListener::Name { .. }),
                "{name:?} in {ns:?}: {err}"
            );
        }
        // Valid alone, too long with the prefix.
        let long = "a".repeat(250);
        let err = Listener::new("ns".into(), long, "u".into()).unwrap_err();
        assert!(
            err.to_string().contains("characters with the prefix"),
            "{err}"
        );
        let fits = "a".repeat(MAX_NAME_LEN - names::PER_LISTENER_PREFIX.len());
        assert!(Listener::new("ns".into(), fits, "u".into()).is_ok());
    }

    #[test]
    fn missing_objects_are_created() {
        let l = listener("uid-1");
        let d = desired(&l);
        assert_eq!(plan_role(&d.role, None, &l), Plan::Create(d.role.clone()));
        assert_eq!(
            plan_binding(&d.binding, None, &l),
            Plan::Create(d.binding.clone())
        );
        assert_eq!(
            plan_lease(&d.lease, None, &l),
            Plan::Create(d.lease.clone())
        );
    }

    #[test]
    fn objects_as_desired_are_kept() {
        let l = listener("uid-1");
        let d = desired(&l);
        assert_eq!(plan_role(&d.role, Some(d.role.clone()), &l), Plan::Keep);
        assert_eq!(
            plan_binding(&d.binding, Some(d.binding.clone()), &l),
            Plan::Keep
        );
        let mut lease = d.lease.clone();
        lease
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(names::ANNOTATION_HISTORY.into(), "{}".into());
        assert_eq!(
            plan_lease(&d.lease, Some(lease), &l),
            Plan::Keep,
            "the watchdog's history stays"
        );
    }

    #[test]
    fn objects_without_the_managed_by_label_are_never_changed() {
        let l = listener("uid-1");
        let d = desired(&l);
        let mut role = d.role.clone();
        role.metadata.labels = Some(
            [(
                "app.kubernetes.io/name".to_owned(),
                "arc-watchdog".to_owned(),
            )]
            .into(),
        );
        role.rules = None;
        assert_eq!(
            plan_role(&d.role, Some(role), &l),
            Plan::Foreign(Foreign::NotManaged)
        );
        let mut binding = d.binding.clone();
        binding.metadata.labels = None;
        assert_eq!(
            plan_binding(&d.binding, Some(binding), &l),
            Plan::Foreign(Foreign::NotManaged)
        );
        let mut lease = d.lease.clone();
        lease.metadata.labels =
            Some([(names::MANAGED_BY_LABEL.to_owned(), "helm".to_owned())].into());
        assert_eq!(
            plan_lease(&d.lease, Some(lease), &l),
            Plan::Foreign(Foreign::NotManaged)
        );
    }

    #[test]
    fn drifted_objects_of_ours_are_repaired_keeping_the_rest() {
        let l = listener("uid-1");
        let d = desired(&l);
        let mut role = d.role.clone();
        role.metadata.resource_version = Some("7".into());
        role.metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "ci".into());
        role.rules
            .get_or_insert_default()
            .push(rule("", &["secrets"], &["get"], None));
        let Plan::Update(fixed) = plan_role(&d.role, Some(role), &l) else {
            panic!("a Role with extra rules is repaired")
        };
        assert_eq!(fixed.rules, d.role.rules);
        assert_eq!(fixed.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(fixed.metadata.labels.as_ref().unwrap()["team"], "ci");

        let mut binding = d.binding.clone();
        binding.subjects.get_or_insert_default()[0].name = "intruder".into();
        let Plan::Update(fixed) = plan_binding(&d.binding, Some(binding), &l) else {
            panic!("a RoleBinding to another subject is repaired")
        };
        assert_eq!(fixed.subjects, d.binding.subjects);

        let mut binding = d.binding.clone();
        binding.role_ref.name = "cluster-admin".into();
        assert_eq!(
            plan_binding(&d.binding, Some(binding), &l),
            Plan::Foreign(Foreign::RoleRefChanged)
        );
    }

    #[test]
    fn objects_of_an_earlier_listener_of_the_same_name_move_to_the_new_one() {
        let old = listener("uid-old");
        let new = listener("uid-new");
        let old_d = desired(&old);
        let new_d = desired(&new);

        let mut role = old_d.role.clone();
        let other_owner = crate::owner::owner_reference("someone", "uid-x");
        role.metadata
            .owner_references
            .get_or_insert_default()
            .push(other_owner.clone());
        let Plan::Update(moved) = plan_role(&new_d.role, Some(role), &new) else {
            panic!("the Role moves to the new listener")
        };
        assert_eq!(
            moved.metadata.owner_references.unwrap(),
            vec![other_owner, new.owner_reference()]
        );

        let mut lease = old_d.lease.clone();
        lease.metadata.resource_version = Some("42".into());
        lease
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(names::ANNOTATION_HISTORY.into(), "{\"old\":true}".into());
        let Plan::Update(fresh) = plan_lease(&new_d.lease, Some(lease), &new) else {
            panic!("the old listener's Lease starts over")
        };
        assert!(
            fresh.metadata.annotations.is_none(),
            "the old history is gone"
        );
        assert_eq!(fresh.metadata.resource_version.as_deref(), Some("42"));
        assert!(owned_by(&fresh.metadata, &new));
        assert!(!owned_by(&fresh.metadata, &old));
    }
}
