//! The Warning Events the webhook publishes (events.k8s.io/v1): one shape
//! for every report, so that each is labelled, owned and attributed alike.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;

use arc_watchdog_core::names;

/// `reportingController` of the webhook's Events.
pub const REPORTING_CONTROLLER: &str = "arc-watchdog.dev/webhook";
/// Longest `note` the API server accepts.
const MAX_NOTE: usize = 1024;
/// Longest `reportingInstance` the API server accepts.
const MAX_INSTANCE: usize = 128;

/// What one Warning Event says.
#[derive(Debug, Clone)]
pub struct Warning<'a> {
    /// The Event's name: deterministic, so that replicas publish it once.
    pub name: String,
    /// The Event's namespace (the object's).
    pub namespace: &'a str,
    /// `reason` (a [`arc_watchdog_core::reasons::Reason`]).
    pub reason: &'a str,
    /// `action`.
    pub action: &'a str,
    /// `note`: what happened and what to do (cut to what the API accepts).
    pub note: String,
    /// The object it is about.
    pub regarding: ObjectReference,
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A reference to the pod `namespace`/`name` with `uid`.
pub fn pod_reference(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(uid.to_owned()),
        ..ObjectReference::default()
    }
}

/// The Event for `w`, published by replica `instance`, owned by `owner`
/// (the webhook's configuration, so that uninstalling removes it). Pure.
pub fn warning(
    w: Warning<'_>,
    instance: &str,
    owner: Option<&OwnerReference>,
    now: Timestamp,
) -> Event {
    // The API server requires the instance non-empty and short.
    let instance = Some(instance.trim())
        .filter(|i| !i.is_empty())
        .unwrap_or("arc-watchdog-webhook")
        .to_owned();
    Event {
        metadata: ObjectMeta {
            name: Some(w.name),
            namespace: Some(w.namespace.to_owned()),
            labels: Some(
                [(
                    names::MANAGED_BY_LABEL.to_owned(),
                    names::MANAGED_BY_VALUE.to_owned(),
                )]
                .into(),
            ),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".to_owned()),
        reason: Some(w.reason.to_owned()),
        action: Some(w.action.to_owned()),
        note: Some(cut(w.note, MAX_NOTE)),
        regarding: Some(w.regarding),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(cut(instance, MAX_INSTANCE)),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_and_instances_are_cut_at_a_character_boundary() {
        let w = Warning {
            name: "e".into(),
            namespace: "ns",
            reason: "R",
            action: "A",
            note: "é".repeat(600),
            regarding: pod_reference("ns", "p", "u"),
        };
        let e = warning(w, &"ü".repeat(100), None, Timestamp::UNIX_EPOCH);
        let note = e.note.unwrap();
        assert!(note.len() <= MAX_NOTE && note.chars().all(|c| c == 'é'));
        let instance = e.reporting_instance.unwrap();
        assert!(instance.len() <= MAX_INSTANCE && instance.chars().all(|c| c == 'ü'));
        let e = warning(
            Warning {
                name: "e".into(),
                namespace: "ns",
                reason: "R",
                action: "A",
                note: "n".into(),
                regarding: pod_reference("ns", "p", "u"),
            },
            "  ",
            None,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            e.reporting_instance.as_deref(),
            Some("arc-watchdog-webhook")
        );
        assert_eq!(e.type_.as_deref(), Some("Warning"));
    }
}
