//! Suspended injection: listeners whose pods the webhook admits without the
//! watchdog for a while, because a watchdog kept one of their pods from
//! starting (see [`crate::blocked`]).
//!
//! A suspension is two annotations on the listener's own Lease
//! `arc-watchdog.<listener>` ([`names::ANNOTATION_SUSPENDED_UNTIL`],
//! [`names::ANNOTATION_SUSPENDED_REASON`]): stored in the API, so every
//! replica and a restarted webhook see it, and gone with the listener (the
//! Lease is owned by its AutoscalingListener). Admission never reads the
//! API: it asks a [`Suspensions`] view, which in the running webhook is
//! [`LeaseView`], an in-memory reflector of the managed Leases.
//!
//! A suspension counts only while it ends within `max` (the webhook's
//! `--suspend-injection-for`) from now: the listener's own ServiceAccount
//! may update its Lease, and a far-future time written there must not turn
//! its watchdog off for good.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

use arc_watchdog_core::names;

/// Longest `reason` kept on the Lease (annotations are small by intent).
pub const MAX_REASON_LEN: usize = 512;

/// One listener's suspension, as stored on its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// When injection starts again.
    pub until: Timestamp,
    /// Why it was suspended.
    pub reason: String,
}

impl Suspension {
    /// The suspension stored on `lease`, if its annotation holds a valid
    /// time (an unreadable one counts as none: the watchdog is injected).
    pub fn of(lease: &Lease) -> Option<Self> {
        let annotations = lease.metadata.annotations.as_ref()?;
        let until = annotations
            .get(names::ANNOTATION_SUSPENDED_UNTIL)?
            .trim()
            .parse::<Timestamp>()
            .ok()?;
        let reason = annotations
            .get(names::ANNOTATION_SUSPENDED_REASON)
            .cloned()
            .unwrap_or_default();
        Some(Self { until, reason })
    }

    /// Whether it holds at `now`: not ended, and ending within `max` (see
    /// the module documentation).
    pub fn is_active(&self, now: Timestamp, max: Duration) -> bool {
        let latest = now.checked_add(max).unwrap_or(Timestamp::MAX);
        now < self.until && self.until <= latest
    }

    /// `lease` with this suspension stored (its resourceVersion kept, so
    /// that the replace is conditional on what was read).
    pub fn store_on(&self, mut lease: Lease) -> Lease {
        let annotations = lease.metadata.annotations.get_or_insert_default();
        annotations.insert(
            names::ANNOTATION_SUSPENDED_UNTIL.to_owned(),
            self.until.to_string(),
        );
        annotations.insert(
            names::ANNOTATION_SUSPENDED_REASON.to_owned(),
            truncate(&self.reason, MAX_REASON_LEN),
        );
        lease
    }
}

/// What [`LeaseView`] keeps of a Lease: its name, namespace and the two
/// annotations of [`Suspension`]; the watchdog's history annotation, the
/// holder, owners and managed fields of a thousand Leases are not kept in
/// memory for nothing. Pure.
pub fn slim_lease(lease: &mut Lease) {
    let meta = std::mem::take(&mut lease.metadata);
    let annotations = meta.annotations.map(|mut a| {
        a.retain(|k, _| {
            k == names::ANNOTATION_SUSPENDED_UNTIL || k == names::ANNOTATION_SUSPENDED_REASON
        });
        a
    });
    lease.metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        annotations,
        ..Default::default()
    };
    lease.spec = None;
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// What admission knows about suspended listeners. Reads memory only.
pub trait Suspensions: Send + Sync {
    /// The end of the active suspension of `listener` (the listener pod's
    /// name) in `namespace` at `now`, if there is one.
    fn suspended_until(&self, namespace: &str, listener: &str, now: Timestamp)
    -> Option<Timestamp>;
}

/// No listener is ever suspended (no kube client, or in tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSuspensions;

impl Suspensions for NoSuspensions {
    fn suspended_until(&self, _: &str, _: &str, _: Timestamp) -> Option<Timestamp> {
        None
    }
}

/// Fixed suspensions by (namespace, listener), for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct FixedSuspensions {
    /// The suspensions.
    pub by_listener: BTreeMap<(String, String), Suspension>,
    /// The bound of [`Suspension::is_active`].
    pub max: Duration,
}

impl Suspensions for FixedSuspensions {
    fn suspended_until(
        &self,
        namespace: &str,
        listener: &str,
        now: Timestamp,
    ) -> Option<Timestamp> {
        self.by_listener
            .get(&(namespace.to_owned(), listener.to_owned()))
            .filter(|s| s.is_active(now, self.max))
            .map(|s| s.until)
    }
}

/// The managed Leases of the listener namespaces, kept current by a
/// reflector each.
#[derive(Debug)]
pub struct LeaseView {
    stores: BTreeMap<String, Store<Lease>>,
    max: Duration,
    changed: Arc<tokio::sync::Notify>,
}

impl LeaseView {
    /// Starts one reflector per namespace (Leases labelled managed-by
    /// arc-watchdog) that runs until `cancel`. A failed list or watch is
    /// logged and retried with backoff; meanwhile the last state stands.
    pub fn start(
        client: &kube::Client,
        namespaces: &[String],
        max: Duration,
        cancel: &CancellationToken,
    ) -> Arc<Self> {
        let selector = format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE);
        let mut stores = BTreeMap::new();
        let changed = Arc::new(tokio::sync::Notify::new());
        for ns in namespaces {
            let (reader, writer) = reflector::store();
            let api: Api<Lease> = Api::namespaced(client.clone(), ns);
            let stream = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default().labels(&selector))
                    .default_backoff()
                    .modify(slim_lease),
            );
            let namespace = ns.clone();
            let cancel = cancel.clone();
            let notify = Arc::clone(&changed);
            tokio::spawn(async move {
                let drain = stream.for_each(|item| {
                    if item.is_ok() {
                        notify.notify_waiters();
                    }
                    if let Err(err) = item {
                        tracing::warn!(
                            namespace = %namespace,
                            error = %err,
                            "cannot list or watch the per-listener Leases (retrying with backoff); \
                             suspensions of injection are not seen meanwhile"
                        );
                    }
                    futures::future::ready(())
                });
                tokio::select! {
                    () = drain => {}
                    () = cancel.cancelled() => {}
                }
            });
            stores.insert(ns.clone(), reader);
        }
        Arc::new(Self {
            stores,
            max,
            changed,
        })
    }

    /// Completes at the next change the reflectors apply (a change that
    /// lands while nobody waits is not remembered: callers also poll).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The suspension stored on `listener`'s Lease, active or not.
    pub fn stored(&self, namespace: &str, listener: &str) -> Option<Suspension> {
        let store = self.stores.get(namespace)?;
        let lease = store.get(&ObjectRef::new(&names::lease_name(listener)).within(namespace))?;
        Suspension::of(&lease)
    }
}

impl Suspensions for LeaseView {
    fn suspended_until(
        &self,
        namespace: &str,
        listener: &str,
        now: Timestamp,
    ) -> Option<Timestamp> {
        self.stored(namespace, listener)
            .filter(|s| s.is_active(now, self.max))
            .map(|s| s.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn stored_and_read_back_keeping_other_annotations() {
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("7".into()),
                annotations: Some(
                    [("arc-watchdog.dev/history".to_owned(), "{}".to_owned())].into(),
                ),
                ..ObjectMeta::default()
            },
            spec: None,
        };
        assert_eq!(Suspension::of(&lease), None);
        let s = Suspension {
            until: at("2025-01-01T01:00:00Z"),
            reason: "ImagePullBackOff".into(),
        };
        let stored = s.store_on(lease);
        assert_eq!(Suspension::of(&stored), Some(s));
        assert_eq!(stored.metadata.resource_version.as_deref(), Some("7"));
        let annotations = stored.metadata.annotations.unwrap();
        assert_eq!(annotations["arc-watchdog.dev/history"], "{}");
        assert_eq!(
            annotations[names::ANNOTATION_SUSPENDED_UNTIL],
            "2025-01-01T01:00:00Z"
        );
    }

    #[test]
    fn a_slim_lease_holds_its_suspension_and_names_only() {
        let whole = Suspension {
            until: at("2025-01-01T01:00:00Z"),
            reason: "ImagePullBackOff".into(),
        }
        .store_on(Lease {
            metadata: ObjectMeta {
                name: Some("arc-watchdog.l".into()),
                namespace: Some("arc-systems".into()),
                resource_version: Some("7".into()),
                annotations: Some(
                    [("arc-watchdog.dev/history".to_owned(), "{}".repeat(500))].into(),
                ),
                managed_fields: Some(vec![Default::default()]),
                ..ObjectMeta::default()
            },
            spec: Some(Default::default()),
        });
        let mut kept = whole.clone();
        slim_lease(&mut kept);
        assert_eq!(Suspension::of(&kept), Suspension::of(&whole));
        assert!(Suspension::of(&kept).is_some());
        assert_eq!(kept.metadata.name.as_deref(), Some("arc-watchdog.l"));
        assert_eq!(kept.metadata.namespace.as_deref(), Some("arc-systems"));
        assert_eq!(
            kept.metadata.annotations.as_ref().map(BTreeMap::len),
            Some(2)
        );
        assert_eq!(kept.metadata.managed_fields, None);
        assert_eq!(kept.spec, None);
        let mut none = Lease::default();
        slim_lease(&mut none);
        assert_eq!(Suspension::of(&none), None);
    }

    #[test]
    fn unreadable_time_is_no_suspension_and_long_reasons_are_cut() {
        let mut lease = Lease::default();
        lease.metadata.annotations = Some(
            [(
                names::ANNOTATION_SUSPENDED_UNTIL.to_owned(),
                "tomorrow".to_owned(),
            )]
            .into(),
        );
        assert_eq!(Suspension::of(&lease), None);
        let s = Suspension {
            until: at("2025-01-01T01:00:00Z"),
            reason: "é".repeat(MAX_REASON_LEN),
        };
        let back = Suspension::of(&s.store_on(Lease::default())).unwrap();
        assert!(back.reason.len() <= MAX_REASON_LEN);
        assert!(back.reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn active_only_before_its_end_and_within_the_bound() {
        let hour = Duration::from_secs(3600);
        let s = Suspension {
            until: at("2025-01-01T01:00:00Z"),
            reason: String::new(),
        };
        assert!(s.is_active(at("2025-01-01T00:00:00Z"), hour));
        assert!(s.is_active(at("2025-01-01T00:59:59Z"), hour));
        assert!(!s.is_active(at("2025-01-01T01:00:00Z"), hour), "ended");
        // Further away than the bound: written by someone else, ignored.
        assert!(!s.is_active(at("2024-12-31T23:59:59Z"), hour));
        assert!(!s.is_active(at("2024-12-31T00:00:00Z"), hour));
    }

    #[test]
    fn fixed_view_answers_by_namespace_and_listener() {
        let until = at("2025-01-01T01:00:00Z");
        let view = FixedSuspensions {
            by_listener: [(
                ("arc-systems".to_owned(), "l".to_owned()),
                Suspension {
                    until,
                    reason: String::new(),
                },
            )]
            .into(),
            max: Duration::from_secs(3600),
        };
        let now = at("2025-01-01T00:30:00Z");
        assert_eq!(view.suspended_until("arc-systems", "l", now), Some(until));
        assert_eq!(view.suspended_until("other", "l", now), None);
        assert_eq!(view.suspended_until("arc-systems", "m", now), None);
        assert_eq!(NoSuspensions.suspended_until("arc-systems", "l", now), None);
    }
}
