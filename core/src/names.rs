//! Names shared by every arc-watchdog component: annotations, labels,
//! container names, ports and paths. One name for one thing: the webhook,
//! the watchdog, the manifests and the docs all use these.

/// Prefix of every annotation and label arc-watchdog owns.
pub const PREFIX: &str = "arc-watchdog.dev/";

/// Opt-out annotation on a listener pod (or its `listenerTemplate`):
/// `"false"` means the webhook leaves the pod alone.
pub const ANNOTATION_INJECT: &str = "arc-watchdog.dev/inject";

/// Annotation the webhook adds to a pod it injected: the sidecar mode used
/// (`native` or `classic`).
pub const ANNOTATION_INJECTED: &str = "arc-watchdog.dev/injected";

/// Annotation on a per-listener Lease holding the watchdog's history (its
/// detector's memory, JSON) across pod generations. The watchdog owns the
/// format; admission reads only the pending backoff of it
/// ([`crate::backoff`]).
pub const ANNOTATION_HISTORY: &str = "arc-watchdog.dev/history";

/// Annotation on a per-listener Lease while the webhook injects no watchdog
/// into that listener's pods: the RFC 3339 time the suspension ends. Set by
/// the webhook when a watchdog kept its listener from starting.
pub const ANNOTATION_SUSPENDED_UNTIL: &str = "arc-watchdog.dev/injection-suspended-until";

/// Annotation beside [`ANNOTATION_SUSPENDED_UNTIL`] on the Lease: why
/// injection is suspended (what kept the watchdog from starting).
pub const ANNOTATION_SUSPENDED_REASON: &str = "arc-watchdog.dev/injection-suspended-reason";

/// Annotation the webhook adds to a listener pod it admitted without the
/// watchdog because injection is suspended for its listener: the RFC 3339
/// time the suspension ends. Marks the pod for good, so that nothing takes
/// it for a missed injection.
pub const ANNOTATION_POD_SUSPENDED: &str = "arc-watchdog.dev/injection-suspended";

/// Name of the injected container (init container in native mode).
pub const CONTAINER_NAME: &str = "arc-watchdog";

/// Name of ARC's listener container (0.8 and later).
pub const LISTENER_CONTAINER: &str = "listener";

/// Name of the listener container in ARC 0.7 and older.
pub const LEGACY_LISTENER_CONTAINER: &str = "autoscaler";

/// Label ARC sets on every listener pod, and its value.
pub const LISTENER_COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Value of [`LISTENER_COMPONENT_LABEL`] on listener pods.
pub const LISTENER_COMPONENT_VALUE: &str = "runner-scale-set-listener";
/// Label ARC sets on listener and runner pods.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// Value of [`PART_OF_LABEL`] on ARC scale-set pods.
pub const PART_OF_VALUE: &str = "gha-runner-scale-set";
/// Label carrying the ARC version on listener pods.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";
/// Label carrying the scale set's name.
pub const SCALE_SET_NAME_LABEL: &str = "actions.github.com/scale-set-name";
/// ARC's own annotation (main branch): arc-watchdog never touches it.
pub const ARC_INTEGRITY_HASH_ANNOTATION: &str = "actions.github.com/integrity-hash";

/// API group, version and kind of ARC's AutoscalingListener, the owner of
/// listener pods.
pub const AUTOSCALING_LISTENER_API_VERSION: &str = "actions.github.com/v1alpha1";
/// Kind of ARC's AutoscalingListener.
pub const AUTOSCALING_LISTENER_KIND: &str = "AutoscalingListener";

/// Label on every object arc-watchdog creates at run time (per-listener
/// Role, RoleBinding and Lease), so that they can be listed and removed.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on objects arc-watchdog creates.
pub const MANAGED_BY_VALUE: &str = "arc-watchdog";

/// Default port of the watchdog's HTTP endpoints.
pub const WATCHDOG_PORT: u16 = 9102;
/// Liveness endpoint of webhook and watchdog.
pub const PATH_HEALTHZ: &str = "/healthz";
/// Readiness endpoint of webhook and watchdog.
pub const PATH_READYZ: &str = "/readyz";
/// The watchdog's single readiness check "watching": 503 only while it
/// fails open (blind to its listener for longer than the grace). The
/// injected readiness probe asks it, so a failing-open watchdog shows as a
/// not-ready container in the pod's status, where `status` reads it.
pub const PATH_READYZ_WATCHING: &str = "/readyz/watching";
/// The watchdog's start gate: 200 only when the listener may start.
pub const PATH_STARTZ: &str = "/startz";
/// Prometheus metrics endpoint.
pub const PATH_METRICS: &str = "/metrics";

/// Environment variables the webhook sets on the injected container from
/// the downward API.
pub const ENV_POD_NAME: &str = "POD_NAME";
/// See [`ENV_POD_NAME`].
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
/// See [`ENV_POD_NAME`].
pub const ENV_POD_UID: &str = "POD_UID";

/// Prefix of the per-listener objects' names. arc-watchdog's own objects
/// (from `manifests/`) never contain a dot, so a per-listener name cannot
/// be one of them, whatever the listener is called.
pub const PER_LISTENER_PREFIX: &str = "arc-watchdog.";

/// Label on the per-listener objects naming their listener (the
/// AutoscalingListener and its pod share the name).
pub const LISTENER_LABEL: &str = "arc-watchdog.dev/listener";

/// Name of the per-listener Lease that remembers conflicts, evictions and
/// the current backoff across pod generations. ARC names the listener pod
/// after its AutoscalingListener and keeps the name across generations, so
/// the Lease name is stable too.
pub fn lease_name(listener_pod: &str) -> String {
    format!("{PER_LISTENER_PREFIX}{listener_pod}")
}

/// Name of the per-listener Role and RoleBinding that let the watchdog read,
/// watch and evict its own pod and update its own Lease.
pub fn rbac_name(listener_pod: &str) -> String {
    format!("{PER_LISTENER_PREFIX}{listener_pod}")
}

/// The listener a per-listener object belongs to, from its name; `None`
/// for any other name.
pub fn listener_of(object_name: &str) -> Option<&str> {
    object_name
        .strip_prefix(PER_LISTENER_PREFIX)
        .filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_listener_names_round_trip_and_never_name_own_objects() {
        assert_eq!(
            lease_name("set-abc-listener"),
            "arc-watchdog.set-abc-listener"
        );
        assert_eq!(
            rbac_name("set-abc-listener"),
            lease_name("set-abc-listener")
        );
        assert_eq!(listener_of(&lease_name("x-listener")), Some("x-listener"));
        assert_eq!(listener_of("arc-watchdog-webhook"), None);
        assert_eq!(listener_of(PER_LISTENER_PREFIX), None);
        // Whatever a listener is called, its objects' names hold a dot and
        // arc-watchdog's own names do not.
        for own in ["arc-watchdog", "arc-watchdog-webhook", "arc-watchdog-ca"] {
            assert_ne!(rbac_name("webhook"), own);
            assert!(!own.contains('.'));
        }
    }
}
