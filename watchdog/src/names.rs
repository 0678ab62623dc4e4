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

/// Name of the per-listener Lease that remembers conflicts, evictions and
/// the current backoff across pod generations. ARC keeps the listener pod's
/// name fixed across generations, so the Lease name is stable too.
pub fn lease_name(listener_pod: &str) -> String {
    format!("arc-watchdog-{listener_pod}")
}

/// Name of the per-listener Role and RoleBinding that let the watchdog read,
/// watch and evict its own pod and update its own Lease.
pub fn rbac_name(listener_pod: &str) -> String {
    format!("arc-watchdog-{listener_pod}")
}
