//! The release loop: watches the listener pods and the per-listener
//! Leases, suspends injection for a listener held by its watchdog, and
//! evicts the held pod (see the module above).

use super::*;

/// The settings of [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a watchdog that cannot start may hold its listener.
    pub blocked_after: Duration,
    /// How long injection stays suspended.
    pub suspend_for: Duration,
    /// This replica's name (the Events' `reportingInstance`).
    pub instance: String,
}

impl Settings {
    /// How often pods are looked at again without a watch event: a blocked
    /// pod's status may not change, yet the time passes.
    pub fn tick(&self) -> Duration {
        (self.blocked_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(15))
    }
}

/// The listener pods of the watched namespaces, by (namespace, name), each
/// kept as [`slim`] leaves it.
#[derive(Debug, Default)]
pub(super) struct Pods {
    pub(super) live: BTreeMap<(String, String), Pod>,
    pub(super) relist: BTreeMap<String, BTreeMap<(String, String), Pod>>,
}

impl Pods {
    pub(super) fn apply(&mut self, namespace: &str, event: watcher::Event<Pod>) {
        let key = |pod: &Pod| {
            (
                namespace.to_owned(),
                pod.metadata.name.clone().unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Apply(pod) => {
                self.live.insert(key(&pod), slim(pod));
            }
            watcher::Event::Delete(pod) => {
                self.live.remove(&key(&pod));
            }
            watcher::Event::Init => {
                self.relist.insert(namespace.to_owned(), BTreeMap::new());
            }
            watcher::Event::InitApply(pod) => {
                self.relist
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(key(&pod), slim(pod));
            }
            watcher::Event::InitDone => {
                let found = self.relist.remove(namespace).unwrap_or_default();
                self.live.retain(|(ns, _), _| ns != namespace);
                self.live.extend(found);
            }
        }
    }
}

/// How one release attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The suspension is written; the eviction follows once the view has it.
    Suspended,
    /// The pod was evicted (or was gone already).
    Evicted,
    /// Nothing can be done for now (logged); try again later.
    Retry,
}

struct Releaser {
    client: kube::Client,
    view: Arc<LeaseView>,
    owner: Arc<ConfigOwner>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl Releaser {
    async fn release(&self, pod: &Blocked, ns_pod: &Pod) -> Step {
        let now = Timestamp::now();
        if self
            .view
            .stored(&pod.namespace, &pod.name)
            .is_some_and(|s| s.is_active(now, self.settings.suspend_for))
        {
            return self.evict(pod).await;
        }
        match self.suspend(pod, ns_pod, now).await {
            Ok(()) => Step::Suspended,
            Err(err) => {
                self.metrics.blocked_action_error();
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    error = %format!("{err:#}"),
                    "a watchdog that cannot start holds this listener; could not suspend \
                     injection for it (retrying)"
                );
                Step::Retry
            }
        }
    }

    /// Writes the suspension on the listener's Lease (creating the Lease as
    /// the per-listener controller would, when it is missing).
    async fn suspend(&self, pod: &Blocked, object: &Pod, now: Timestamp) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &pod.namespace);
        let name = names::lease_name(&pod.name);
        let until = now
            .checked_add(self.settings.suspend_for)
            .context("suspension end out of range")?;
        let suspension = Suspension {
            until,
            reason: pod.cause.clone(),
        };
        let pp = PostParams {
            field_manager: Some(names::MANAGED_BY_VALUE.to_owned()),
            ..PostParams::default()
        };
        let have = tokio::time::timeout(CALL_TIMEOUT, leases.get_opt(&name))
            .await
            .context("reading the Lease timed out")?
            .with_context(|| format!("reading Lease {}/{name}", pod.namespace))?;
        match have {
            Some(lease) => {
                let managed = lease
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::MANAGED_BY_LABEL))
                    .is_some_and(|v| v == names::MANAGED_BY_VALUE);
                anyhow::ensure!(
                    managed,
                    "Lease {}/{name} is not arc-watchdog's (no label {}={}); left alone",
                    pod.namespace,
                    names::MANAGED_BY_LABEL,
                    names::MANAGED_BY_VALUE
                );
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    leases.replace(&name, &pp, &suspension.store_on(lease)),
                )
                .await
                .context("writing the Lease timed out")?
                .with_context(|| format!("writing Lease {}/{name}", pod.namespace))?;
            }
            None => {
                let owner = object
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|r| r.kind == names::AUTOSCALING_LISTENER_KIND)
                    .context("the pod has no AutoscalingListener owner to own its Lease")?;
                let listener =
                    Listener::new(pod.namespace.clone(), owner.name.clone(), owner.uid.clone())
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                let lease = suspension.store_on(desired::desired(&listener).lease);
                tokio::time::timeout(CALL_TIMEOUT, leases.create(&pp, &lease))
                    .await
                    .context("creating the Lease timed out")?
                    .with_context(|| format!("creating Lease {}/{name}", pod.namespace))?;
            }
        }
        tracing::warn!(
            namespace = %pod.namespace,
            pod = %pod.name,
            cause = %pod.cause,
            until = %until,
            "a watchdog that cannot start holds this listener: injection suspended for it"
        );
        Ok(())
    }

    async fn evict(&self, pod: &Blocked) -> Step {
        // Only this generation: a pod ARC made meanwhile is not held.
        let sent = crate::evict::evict_pod(
            self.client.clone(),
            &pod.namespace,
            &pod.name,
            &pod.uid,
            None,
            false,
        );
        let result = tokio::time::timeout(CALL_TIMEOUT, sent).await;
        match result {
            Ok(Ok(_)) => {
                self.metrics.injection_suspension();
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    uid = %pod.uid,
                    cause = %pod.cause,
                    "evicted a listener pod held by a watchdog that cannot start; ARC recreates \
                     it without the watchdog"
                );
                self.report(pod).await;
                Step::Evicted
            }
            // Gone, or replaced by a new generation already: nothing held.
            Ok(Err(kube::Error::Api(s))) if s.code == 404 || s.code == 409 => Step::Evicted,
            Ok(Err(err)) => {
                self.metrics.blocked_action_error();
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    error = %err,
                    "could not evict a listener pod held by a watchdog that cannot start (retrying)"
                );
                Step::Retry
            }
            Err(_) => {
                self.metrics.blocked_action_error();
                tracing::warn!(
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    "evicting a listener pod held by a watchdog that cannot start timed out (retrying)"
                );
                Step::Retry
            }
        }
    }

    async fn report(&self, pod: &Blocked) {
        let now = Timestamp::now();
        let until = self
            .view
            .stored(&pod.namespace, &pod.name)
            .map_or(now, |s| s.until);
        let owner = match tokio::time::timeout(CALL_TIMEOUT, self.owner.reference()).await {
            Ok(Ok(owner)) => owner,
            _ => None,
        };
        let event = event_for(pod, until, &self.settings.instance, owner.as_ref(), now);
        let events: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        match tokio::time::timeout(CALL_TIMEOUT, events.create(&PostParams::default(), &event))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {}
            Ok(Err(err)) => tracing::warn!(
                namespace = %pod.namespace,
                pod = %pod.name,
                error = %err,
                "could not create the InjectionSuspended Event (the log line above says it all)"
            ),
            Err(_) => tracing::warn!(
                namespace = %pod.namespace,
                pod = %pod.name,
                "creating the InjectionSuspended Event timed out"
            ),
        }
    }
}

/// Watches the listener pods of `namespaces` and releases those held by a
/// watchdog that cannot start, until `cancel`. Never returns an error:
/// failures are logged, counted and retried.
pub async fn run(
    client: kube::Client,
    namespaces: Vec<String>,
    view: Arc<LeaseView>,
    owner: Arc<ConfigOwner>,
    metrics: Arc<Metrics>,
    settings: Settings,
    cancel: CancellationToken,
) {
    let mut merged = crate::coverage::listener_pod_events(&client, &namespaces);
    let mut tick = tokio::time::interval(settings.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let releaser = Releaser {
        client,
        view: Arc::clone(&view),
        owner,
        metrics: Arc::clone(&metrics),
        settings,
    };
    let mut pods = Pods::default();
    // UIDs released (evicted or gone), and when a failed one may be retried.
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut retry_at: BTreeMap<String, Instant> = BTreeMap::new();
    tracing::info!(
        namespaces = ?namespaces,
        blocked_after = ?releaser.settings.blocked_after,
        suspend_for = ?releaser.settings.suspend_for,
        "watching listener pods for watchdogs that cannot start"
    );
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            item = merged.next() => match item {
                Some(Ok((ns, event))) => pods.apply(&ns, event),
                Some(Err(err)) => tracing::warn!(
                    error = %err,
                    "cannot list or watch listener pods (retrying with backoff); listeners held \
                     by a watchdog that cannot start are not released meanwhile"
                ),
                None => return,
            },
            () = view.changed() => {}
            _ = tick.tick() => {}
        }
        let now = Timestamp::now();
        let blocked: Vec<(Blocked, Pod)> = pods
            .live
            .values()
            .filter_map(|p| {
                blocked(p, now, releaser.settings.blocked_after).map(|b| (b, p.clone()))
            })
            .collect();
        let live: BTreeSet<&str> = pods
            .live
            .values()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        done.retain(|uid| live.contains(uid.as_str()));
        retry_at.retain(|uid, _| live.contains(uid.as_str()));
        metrics.set_blocked_listeners(blocked.len());
        metrics.set_suspended_listeners(pods.live.values().filter(|p| runs_suspended(p)).count());
        for (pod, object) in blocked {
            if done.contains(&pod.uid)
                || retry_at.get(&pod.uid).is_some_and(|t| *t > Instant::now())
            {
                continue;
            }
            let step = tokio::select! {
                () = cancel.cancelled() => return,
                step = releaser.release(&pod, &object) => step,
            };
            match step {
                Step::Evicted => {
                    done.insert(pod.uid.clone());
                }
                // The eviction follows when the view shows the suspension
                // (its change wakes this loop).
                Step::Suspended => {}
                Step::Retry => {
                    retry_at.insert(pod.uid.clone(), Instant::now() + RETRY_AFTER);
                }
            }
        }
    }
}
