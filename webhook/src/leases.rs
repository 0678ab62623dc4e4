//! What admission knows of each listener from its Lease
//! `arc-watchdog.<listener>`: whether injection is suspended
//! ([`Suspension`]) and whether a backoff holds its next start ([`Backoff`],
//! read from the watchdog's history).
//!
//! Admission never reads the API: it asks a [`ListenerLeases`] view. The
//! running webhook's is [`LeaseView`], an in-memory reflector of the managed
//! Leases; [`NoLeases`] knows nothing (no kube client), so no listener is
//! suspended and every native sidecar gets its start gate.
//!
//! The start gate (the native sidecar's startupProbe on `/startz`) holds the
//! listener only while a backoff is pending, and a probe costs the listener
//! up to one probe period of its start even when the gate is open. So it is
//! added only when a backoff is pending or the view cannot tell. The
//! backoff in the Lease is written by the previous pod's watchdog when it
//! sees the failed start, before ARC's controller replaces that pod; the
//! new watchdog reads the same history, and clamps a far-future backoff
//! itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_watchdog_core::backoff::Backoff;
use arc_watchdog_core::names;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

use crate::suspension::Suspension;

/// What admission knows about listeners from their Leases. Reads memory
/// only.
pub trait ListenerLeases: Send + Sync {
    /// The end of the active suspension of `listener` (the listener pod's
    /// name) in `namespace` at `now`, if there is one.
    fn suspended_until(&self, namespace: &str, listener: &str, now: Timestamp)
    -> Option<Timestamp>;

    /// Whether a backoff holds `listener`'s next start at `now`. `None`:
    /// the view cannot tell (not synced yet, an unreadable history), and
    /// admission then adds the start gate as if a backoff were pending.
    fn backoff_pending(&self, namespace: &str, listener: &str, now: Timestamp) -> Option<bool>;
}

/// Knows no Lease: no listener is suspended, and whether a backoff is
/// pending is unknown (no kube client, or in tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLeases;

impl ListenerLeases for NoLeases {
    fn suspended_until(&self, _: &str, _: &str, _: Timestamp) -> Option<Timestamp> {
        None
    }

    fn backoff_pending(&self, _: &str, _: &str, _: Timestamp) -> Option<bool> {
        None
    }
}

/// Fixed Lease contents by (namespace, listener), for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct FixedLeases {
    /// The suspensions.
    pub suspensions: BTreeMap<(String, String), Suspension>,
    /// The bound of [`Suspension::is_active`].
    pub max: Duration,
    /// The backoffs, when known: a listener missing here has none. `None`:
    /// unknown for every listener.
    pub backoffs: Option<BTreeMap<(String, String), Backoff>>,
}

impl ListenerLeases for FixedLeases {
    fn suspended_until(
        &self,
        namespace: &str,
        listener: &str,
        now: Timestamp,
    ) -> Option<Timestamp> {
        self.suspensions
            .get(&(namespace.to_owned(), listener.to_owned()))
            .filter(|s| s.is_active(now, self.max))
            .map(|s| s.until)
    }

    fn backoff_pending(&self, namespace: &str, listener: &str, now: Timestamp) -> Option<bool> {
        let backoffs = self.backoffs.as_ref()?;
        Some(
            backoffs
                .get(&(namespace.to_owned(), listener.to_owned()))
                .is_some_and(|b| b.is_pending(now)),
        )
    }
}

/// What [`LeaseView`] keeps of a Lease: its name and namespace, the two
/// annotations of [`Suspension`] and, of the watchdog's history, only its
/// backoff (an unreadable history is kept as an empty one that cannot be
/// read either). The rest of the history, the holder, owners and managed
/// fields of a thousand Leases are not kept in memory for nothing. Pure.
pub fn slim_lease(lease: &mut Lease) {
    let meta = std::mem::take(&mut lease.metadata);
    let annotations = meta.annotations.map(|mut a| {
        a.retain(|k, _| {
            k == names::ANNOTATION_SUSPENDED_UNTIL
                || k == names::ANNOTATION_SUSPENDED_REASON
                || k == names::ANNOTATION_HISTORY
        });
        if let Some(history) = a.get_mut(names::ANNOTATION_HISTORY) {
            *history = Backoff::from_history(history)
                .map(|b| b.to_history())
                .unwrap_or_default();
        }
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

/// Whether a backoff stored on `lease` holds the next start at `now`
/// (`None`: its history cannot be read).
pub fn backoff_pending_on(lease: &Lease, now: Timestamp) -> Option<bool> {
    let history = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_HISTORY));
    match history {
        None => Some(false),
        Some(json) => Backoff::from_history(json).ok().map(|b| b.is_pending(now)),
    }
}

/// One namespace's reflector: its store, and whether its first list is in.
#[derive(Debug)]
struct Namespace {
    store: Store<Lease>,
    synced: Arc<AtomicBool>,
}

/// The managed Leases of the listener namespaces, kept current by a
/// reflector each.
#[derive(Debug)]
pub struct LeaseView {
    namespaces: BTreeMap<String, Namespace>,
    /// The bound of [`Suspension::is_active`]; `None`: suspensions are not
    /// honoured (the webhook does not release blocked listeners).
    suspensions_max: Option<Duration>,
    changed: Arc<tokio::sync::Notify>,
}

impl LeaseView {
    /// Starts one reflector per namespace (Leases labelled managed-by
    /// arc-watchdog) that runs until `cancel`. A failed list or watch is
    /// logged and retried with backoff; meanwhile the last state stands.
    /// `suspensions_max`: see [`LeaseView::suspended_until`].
    pub fn start(
        client: &kube::Client,
        namespaces: &[String],
        suspensions_max: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Arc<Self> {
        let selector = format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE);
        let mut views = BTreeMap::new();
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
            let synced = Arc::new(AtomicBool::new(false));
            let namespace = ns.clone();
            let cancel = cancel.clone();
            let notify = Arc::clone(&changed);
            let first_list = Arc::clone(&synced);
            tokio::spawn(async move {
                let drain = stream.for_each(|item| {
                    match item {
                        Ok(event) => {
                            if matches!(event, watcher::Event::InitDone) {
                                first_list.store(true, Ordering::Release);
                            }
                            notify.notify_waiters();
                        }
                        Err(err) => tracing::warn!(
                            namespace = %namespace,
                            error = %err,
                            "cannot list or watch the per-listener Leases (retrying with backoff); \
                             meanwhile suspensions of injection and pending backoffs are not seen \
                             (until the first list, every native watchdog gets its start gate)"
                        ),
                    }
                    futures::future::ready(())
                });
                tokio::select! {
                    () = drain => {}
                    () = cancel.cancelled() => {}
                }
            });
            views.insert(
                ns.clone(),
                Namespace {
                    store: reader,
                    synced,
                },
            );
        }
        Arc::new(Self {
            namespaces: views,
            suspensions_max,
            changed,
        })
    }

    /// Completes at the next change the reflectors apply (a change that
    /// lands while nobody waits is not remembered: callers also poll).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// `listener`'s Lease as kept ([`slim_lease`]), if there is one.
    fn lease(&self, namespace: &str, listener: &str) -> Option<Arc<Lease>> {
        let ns = self.namespaces.get(namespace)?;
        ns.store
            .get(&ObjectRef::new(&names::lease_name(listener)).within(namespace))
    }

    /// The suspension stored on `listener`'s Lease, active or not.
    pub fn stored(&self, namespace: &str, listener: &str) -> Option<Suspension> {
        let lease = self.lease(namespace, listener)?;
        Suspension::of(&lease)
    }
}

impl ListenerLeases for LeaseView {
    /// Only when suspensions are honoured, and within their bound.
    fn suspended_until(
        &self,
        namespace: &str,
        listener: &str,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let max = self.suspensions_max?;
        self.stored(namespace, listener)
            .filter(|s| s.is_active(now, max))
            .map(|s| s.until)
    }

    /// Unknown until the namespace's first list is in, and for a namespace
    /// not watched. A listener without a Lease has no history, so no
    /// backoff.
    fn backoff_pending(&self, namespace: &str, listener: &str, now: Timestamp) -> Option<bool> {
        let ns = self.namespaces.get(namespace)?;
        if !ns.synced.load(Ordering::Acquire) {
            return None;
        }
        match self.lease(namespace, listener) {
            None => Some(false),
            Some(lease) => backoff_pending_on(&lease, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lease_with(annotations: &[(&str, String)]) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("arc-watchdog.l".into()),
                namespace: Some("arc-systems".into()),
                resource_version: Some("7".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), v.clone()))
                        .collect(),
                ),
                managed_fields: Some(vec![Default::default()]),
                ..ObjectMeta::default()
            },
            spec: Some(Default::default()),
        }
    }

    /// A watchdog history of the shape the watchdog writes, its loop held
    /// until `not_before`, with a long run state beside it.
    fn history(not_before: &str) -> String {
        format!(
            r#"{{"version":1,"conflicts":["2025-01-01T00:00:00Z"],"loop":{{"since":"2025-01-01T00:00:00Z","cause":"session_conflict","conflict_loop":true,"delay_ms":30000,"not_before":"{not_before}","last_failure":"2025-01-01T00:00:00Z","times_at_cap":0,"duplicate_suspected":false}},"run":{{"id":"{}","started":"2025-01-01T00:00:00Z","in_place":false,"ended":null,"established":false,"failure":null,"last_output":null,"hung":false,"high_water":null,"seen":[]}}}}"#,
            "c".repeat(2000)
        )
    }

    #[test]
    fn a_slim_lease_holds_its_suspension_backoff_and_names_only() {
        let whole = Suspension {
            until: at("2025-01-01T01:00:00Z"),
            reason: "ImagePullBackOff".into(),
        }
        .store_on(lease_with(&[
            (names::ANNOTATION_HISTORY, history("2025-01-01T00:00:30Z")),
            ("other", "x".repeat(500)),
        ]));
        let mut kept = whole.clone();
        slim_lease(&mut kept);
        assert_eq!(Suspension::of(&kept), Suspension::of(&whole));
        assert!(Suspension::of(&kept).is_some());
        for now in ["2025-01-01T00:00:29Z", "2025-01-01T00:00:30Z"] {
            assert_eq!(
                backoff_pending_on(&kept, at(now)),
                backoff_pending_on(&whole, at(now)),
                "{now}"
            );
        }
        assert_eq!(
            backoff_pending_on(&kept, at("2025-01-01T00:00:29Z")),
            Some(true)
        );
        assert_eq!(kept.metadata.name.as_deref(), Some("arc-watchdog.l"));
        assert_eq!(kept.metadata.namespace.as_deref(), Some("arc-systems"));
        let annotations = kept.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 3);
        assert!(annotations[names::ANNOTATION_HISTORY].len() < 100);
        assert_eq!(kept.metadata.managed_fields, None);
        assert_eq!(kept.spec, None);
        let mut none = Lease::default();
        slim_lease(&mut none);
        assert_eq!(Suspension::of(&none), None);
        assert_eq!(
            backoff_pending_on(&none, Timestamp::UNIX_EPOCH),
            Some(false)
        );
    }

    #[test]
    fn an_unreadable_history_stays_unreadable_when_slimmed() {
        let mut lease = lease_with(&[(names::ANNOTATION_HISTORY, "{\"loop\":".to_owned())]);
        assert_eq!(backoff_pending_on(&lease, Timestamp::UNIX_EPOCH), None);
        slim_lease(&mut lease);
        assert_eq!(backoff_pending_on(&lease, Timestamp::UNIX_EPOCH), None);
        // A history without a loop holds no backoff, slim or not.
        let mut calm = lease_with(&[(names::ANNOTATION_HISTORY, "{\"version\":1}".to_owned())]);
        assert_eq!(
            backoff_pending_on(&calm, Timestamp::UNIX_EPOCH),
            Some(false)
        );
        slim_lease(&mut calm);
        assert_eq!(
            backoff_pending_on(&calm, Timestamp::UNIX_EPOCH),
            Some(false)
        );
    }

    #[test]
    fn fixed_view_answers_by_namespace_and_listener() {
        let until = at("2025-01-01T01:00:00Z");
        let key = ("arc-systems".to_owned(), "l".to_owned());
        let mut view = FixedLeases {
            suspensions: [(
                key.clone(),
                Suspension {
                    until,
                    reason: String::new(),
                },
            )]
            .into(),
            max: Duration::from_secs(3600),
            backoffs: None,
        };
        let now = at("2025-01-01T00:30:00Z");
        assert_eq!(view.suspended_until("arc-systems", "l", now), Some(until));
        assert_eq!(view.suspended_until("other", "l", now), None);
        assert_eq!(view.suspended_until("arc-systems", "m", now), None);
        assert_eq!(view.backoff_pending("arc-systems", "l", now), None);
        view.backoffs = Some([(key, Backoff::until(Some(until)))].into());
        assert_eq!(view.backoff_pending("arc-systems", "l", now), Some(true));
        assert_eq!(view.backoff_pending("arc-systems", "l", until), Some(false));
        assert_eq!(view.backoff_pending("arc-systems", "m", now), Some(false));
        assert_eq!(NoLeases.suspended_until("arc-systems", "l", now), None);
        assert_eq!(NoLeases.backoff_pending("arc-systems", "l", now), None);
    }
}
