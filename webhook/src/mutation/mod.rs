//! The mutation: a pure function of (pod, configuration, what admission
//! knows of the pod's listener) to a JSON patch.
//!
//! No I/O here. The review layer ([`crate::review`]) decides whether a
//! request is a pod CREATE at all and asks the listener's Lease view
//! ([`crate::leases`]) about a suspension and a pending backoff; this module
//! decides whether the pod is an ARC listener that needs the watchdog and
//! builds the patch that adds it.
//!
//! The patch only ever *adds*: the watchdog container (first init container
//! in native mode, last container in classic mode), its token volume and the
//! `arc-watchdog.dev/injected` annotation. Existing containers, init
//! containers, volumes, labels and annotations are never replaced, so ARC's
//! own fields (its `actions.github.com/integrity-hash` annotation above all)
//! stay exactly as ARC wrote them.

use std::collections::BTreeMap;
use std::time::Duration;

pub use arc_watchdog_core::SidecarMode;
use arc_watchdog_core::names;
use arc_watchdog_core::settings::Thresholds;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

mod patch;

pub use patch::{Patch, PatchOperation, PatchValue};
use patch::{add, add_annotation, pointer};

/// Name of the projected volume that carries the watchdog's API token.
pub const TOKEN_VOLUME: &str = "arc-watchdog-token";
/// Where the token volume is mounted: the path kube's in-cluster config reads.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Name of the watchdog's container port.
pub const PORT_NAME: &str = "watchdog";
/// Period of the start-gate probe, in seconds: the least Kubernetes
/// allows. The kubelet starts the listener at the first probe that finds
/// the gate open, so a probed gate adds up to one period to the listener's
/// start even when it opens at once; that is why the probe is only added
/// while a backoff is pending ([`StartGate`]). A probe is one loopback GET,
/// and only while the listener waits.
pub const STARTUP_PERIOD_SECONDS: i32 = 1;
/// Extra time on top of the longest backoff and the fail-open grace before
/// the kubelet gives up on the start gate (and restarts the watchdog):
/// covers the watchdog's own start-up, API latency and probe jitter.
pub const STARTUP_MARGIN: Duration = Duration::from_secs(60);
/// Lifetime requested for the projected token; the kubelet refreshes it
/// well before it expires. 3607 s matches what the ServiceAccount admission
/// plugin requests, so the API server treats it the same way.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// User and group the watchdog runs as (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;

/// Requests and limits of the injected container, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// CPU request, e.g. `10m`.
    pub cpu_request: String,
    /// Memory request, e.g. `16Mi`.
    pub memory_request: String,
    /// CPU limit; none by default (a throttled watchdog would miss probes).
    pub cpu_limit: Option<String>,
    /// Memory limit, e.g. `64Mi`.
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: "10m".to_owned(),
            memory_request: "16Mi".to_owned(),
            cpu_limit: None,
            memory_limit: Some("64Mi".to_owned()),
        }
    }
}

/// Everything the mutation needs besides the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of the injected watchdog.
    pub image: String,
    /// Requests and limits of the injected container.
    pub resources: Resources,
    /// Thresholds passed on to `arc-watchdog run`.
    pub thresholds: Thresholds,
    /// The watchdog's `--fail-open-grace` (its default, 20 s): after this
    /// long without seeing the API the start gate opens. Only used to size
    /// the startup probe.
    pub fail_open_grace: Duration,
    /// Port of the watchdog's health, start-gate and metrics server. Pods
    /// share their network namespace, and `hostNetwork` pods share the
    /// node's: a listener template whose own containers use the default
    /// port, or two `hostNetwork` listeners on one node, need another.
    pub port: u16,
}

impl InjectConfig {
    /// A configuration with default resources and thresholds.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            resources: Resources::default(),
            thresholds: Thresholds::default(),
            fail_open_grace: Duration::from_secs(20),
            port: names::WATCHDOG_PORT,
        }
    }
}

/// Why a pod gets no patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Not an ARC listener pod (label or `listener` container missing).
    NotListener,
    /// The pod carries `arc-watchdog.dev/inject: "false"`.
    OptedOut,
    /// The pod already has a container or init container named `arc-watchdog`.
    AlreadyInjected,
    /// The pod uses the node's network (`hostNetwork: true`): the watchdog's
    /// port would be the node's, shared with every other `hostNetwork` pod
    /// there, and a clash would keep the listener from starting.
    HostNetwork,
    /// Injection is suspended for this listener: its watchdog kept an
    /// earlier pod from starting (see [`crate::blocked`]). The pod carries
    /// [`names::ANNOTATION_POD_SUSPENDED`].
    InjectionSuspended,
}

impl SkipReason {
    /// Metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotListener => "not_listener",
            Self::OptedOut => "opted_out",
            Self::AlreadyInjected => "already_injected",
            Self::HostNetwork => "host_network",
            Self::InjectionSuspended => "injection_suspended",
        }
    }
}

/// Whether an injected native sidecar carries the start gate: the
/// startupProbe on `/startz` that holds the listener's start while the
/// watchdog answers 503.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StartGate {
    /// With the probe: a backoff is pending, or admission cannot tell. The
    /// kubelet starts the listener only once `/startz` opens.
    #[default]
    Probed,
    /// Without: no backoff is pending (or the watchdog runs in dry-run,
    /// which never delays a start). The listener starts as soon as the
    /// watchdog's container runs, with no probe period to wait for.
    Open,
}

impl StartGate {
    /// The gate for a listener whose Lease view answered `backoff_pending`
    /// ([`crate::leases::ListenerLeases::backoff_pending`]).
    pub fn for_listener(cfg: &InjectConfig, backoff_pending: Option<bool>) -> Self {
        if cfg.thresholds.dry_run || backoff_pending == Some(false) {
            StartGate::Open
        } else {
            StartGate::Probed
        }
    }
}

/// What admission knows of a pod's listener besides the pod: whether its
/// injection is suspended, and whether its start needs the gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerFacts {
    /// The end of the listener's suspension of injection, if it has one: a
    /// pod that would get the watchdog is admitted without it instead,
    /// marked with [`names::ANNOTATION_POD_SUSPENDED`].
    pub suspended_until: Option<Timestamp>,
    /// The start gate of a native sidecar (a classic one has none).
    pub gate: StartGate,
}

/// What the mutation decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Add the watchdog with this patch.
    Inject {
        /// The mode used.
        mode: SidecarMode,
        /// The JSON patch (RFC 6902) to return to the API server.
        patch: Patch,
    },
    /// Leave the pod alone.
    Skip(SkipReason),
    /// Injection is suspended for the pod's listener: admit it without the
    /// watchdog, marked with [`names::ANNOTATION_POD_SUSPENDED`] by this
    /// patch (the only change).
    Suspended {
        /// When the suspension ends.
        until: Timestamp,
        /// The JSON patch that adds the annotation.
        patch: Patch,
    },
}

/// True for a pod ARC built as a scale-set listener: the component label
/// and a container named `listener`.
pub fn is_listener(pod: &Pod) -> bool {
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::LISTENER_COMPONENT_LABEL))
        .is_some_and(|v| v == names::LISTENER_COMPONENT_VALUE);
    let has_listener = pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .any(|c| c.name == names::LISTENER_CONTAINER)
    });
    labelled && has_listener
}

/// True when the pod opts out with `arc-watchdog.dev/inject: "false"`
/// (case and surrounding blanks ignored: an opt-out is never overlooked
/// because of spelling).
pub fn is_opted_out(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_INJECT))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

/// True when the pod uses the node's network namespace.
pub fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// True when the webhook admitted the pod without the watchdog because
/// injection was suspended for its listener.
pub fn is_suspended(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(names::ANNOTATION_POD_SUSPENDED))
}

/// True when the pod already has the watchdog (as container or init container).
pub fn is_injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == names::CONTAINER_NAME)
    })
}

/// Why `pod` needs no watchdog, or `None` when it is an ARC listener that
/// should have one and does not. Shared by the admission ([`mutate`]) and
/// the report of listeners created while the webhook was away
/// ([`crate::coverage`]), so both always agree on which pods need it.
pub fn skip_reason(pod: &Pod) -> Option<SkipReason> {
    if !is_listener(pod) {
        return Some(SkipReason::NotListener);
    }
    if is_opted_out(pod) {
        return Some(SkipReason::OptedOut);
    }
    if is_injected(pod) {
        return Some(SkipReason::AlreadyInjected);
    }
    if is_suspended(pod) {
        return Some(SkipReason::InjectionSuspended);
    }
    if is_host_network(pod) {
        return Some(SkipReason::HostNetwork);
    }
    None
}

/// Decides whether and how to inject the watchdog into `pod`, knowing
/// nothing of its listener (not suspended, the start gate probed).
pub fn mutate(pod: &Pod, cfg: &InjectConfig, mode: SidecarMode) -> Mutation {
    mutate_for(pod, cfg, mode, ListenerFacts::default())
}

/// [`mutate`], for a pod whose listener is known by `facts`.
pub fn mutate_for(
    pod: &Pod,
    cfg: &InjectConfig,
    mode: SidecarMode,
    facts: ListenerFacts,
) -> Mutation {
    if let Some(reason) = skip_reason(pod) {
        return Mutation::Skip(reason);
    }
    if let Some(until) = facts.suspended_until {
        return Mutation::Suspended {
            until,
            patch: suspended_patch(pod, until),
        };
    }
    Mutation::Inject {
        mode,
        patch: build_patch(pod, cfg, mode, facts.gate),
    }
}

fn suspended_patch(pod: &Pod, until: Timestamp) -> Patch {
    Patch(vec![add_annotation(
        pod,
        names::ANNOTATION_POD_SUSPENDED,
        until.to_string(),
    )])
}

/// The UID of the AutoscalingListener that owns `pod`, when it has one of
/// the shape Kubernetes gives UIDs.
pub fn listener_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| {
            r.kind == names::AUTOSCALING_LISTENER_KIND
                && r.api_version == names::AUTOSCALING_LISTENER_API_VERSION
        })
        .map(|r| r.uid.as_str())
        .filter(|uid| {
            !uid.is_empty()
                && uid.len() <= 64
                && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        })
}

fn build_patch(pod: &Pod, cfg: &InjectConfig, mode: SidecarMode, gate: StartGate) -> Patch {
    let spec = pod.spec.as_ref();
    let mut watchdog = watchdog_container(cfg, mode, gate);
    // The watchdog's history belongs to this AutoscalingListener: a Lease
    // left by an earlier listener of the same name is not its own.
    if let Some(uid) = listener_uid(pod) {
        watchdog
            .args
            .get_or_insert_with(Vec::new)
            .push(format!("--listener-uid={uid}"));
    }
    let mut ops = Vec::with_capacity(3);

    match mode {
        SidecarMode::Native => {
            // Adding at index 0 needs an existing array; when there is none
            // (or it is null) the whole array is added instead.
            if spec.and_then(|s| s.init_containers.as_ref()).is_some() {
                ops.push(add(
                    pointer(&["spec", "initContainers", "0"]),
                    PatchValue::Container(Box::new(watchdog)),
                ));
            } else {
                ops.push(add(
                    pointer(&["spec", "initContainers"]),
                    PatchValue::Containers(vec![watchdog]),
                ));
            }
        }
        SidecarMode::Classic => {
            ops.push(add(
                pointer(&["spec", "containers", "-"]),
                PatchValue::Container(Box::new(watchdog)),
            ));
        }
    }

    let volumes = spec.and_then(|s| s.volumes.as_ref());
    let has_token_volume = volumes.is_some_and(|v| v.iter().any(|v| v.name == TOKEN_VOLUME));
    if !has_token_volume {
        if volumes.is_some() {
            ops.push(add(
                pointer(&["spec", "volumes", "-"]),
                PatchValue::Volume(Box::new(token_volume())),
            ));
        } else {
            ops.push(add(
                pointer(&["spec", "volumes"]),
                PatchValue::Volumes(vec![token_volume()]),
            ));
        }
    }

    ops.push(add_annotation(
        pod,
        names::ANNOTATION_INJECTED,
        mode.as_str().to_owned(),
    ));
    Patch(ops)
}

/// How many failed start-gate probes the kubelet tolerates: enough that
/// the longest backoff plus the fail-open grace plus a margin never trips
/// it (a tripped probe restarts the watchdog and, with it, the gate).
pub fn startup_failure_threshold(cfg: &InjectConfig) -> i32 {
    let budget = cfg
        .thresholds
        .backoff_max
        .saturating_add(cfg.fail_open_grace)
        .saturating_add(STARTUP_MARGIN);
    let period = u64::from(STARTUP_PERIOD_SECONDS.unsigned_abs());
    let probes = budget.as_secs().div_ceil(period).max(1);
    i32::try_from(probes).unwrap_or(i32::MAX)
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(PORT_NAME.to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        ..Probe::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: field_path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The injected container, exactly as it lands in the pod.
pub fn watchdog_container(cfg: &InjectConfig, mode: SidecarMode, gate: StartGate) -> Container {
    let mut args = vec!["run".to_owned()];
    args.extend(cfg.thresholds.to_args());
    if cfg.port != names::WATCHDOG_PORT {
        // The watchdog's own default is the default port.
        args.push(format!("--listen=0.0.0.0:{}", cfg.port));
    }

    let mut requests = BTreeMap::new();
    requests.insert(
        "cpu".to_owned(),
        Quantity(cfg.resources.cpu_request.clone()),
    );
    requests.insert(
        "memory".to_owned(),
        Quantity(cfg.resources.memory_request.clone()),
    );
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &cfg.resources.cpu_limit {
        limits.insert("cpu".to_owned(), Quantity(cpu.clone()));
    }
    if let Some(memory) = &cfg.resources.memory_limit {
        limits.insert("memory".to_owned(), Quantity(memory.clone()));
    }

    let liveness = Probe {
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..http_probe(names::PATH_HEALTHZ)
    };

    // Only the "watching" check: a not-ready watchdog container then means
    // exactly "failing open" (status shows it); an Event or Lease error
    // alone does not make the pod unready. The listener's own readiness is
    // untouched, and ARC's listener controller does not read pod readiness.
    let readiness = Probe {
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        failure_threshold: Some(1),
        ..http_probe(names::PATH_READYZ_WATCHING)
    };

    let startup_probe = Probe {
        period_seconds: Some(STARTUP_PERIOD_SECONDS),
        timeout_seconds: Some(2),
        failure_threshold: Some(startup_failure_threshold(cfg)),
        ..http_probe(names::PATH_STARTZ)
    };
    let (restart_policy, startup_probe) = match (mode, gate) {
        (SidecarMode::Native, StartGate::Probed) => {
            (Some("Always".to_owned()), Some(startup_probe))
        }
        (SidecarMode::Native, StartGate::Open) => (Some("Always".to_owned()), None),
        (SidecarMode::Classic, _) => (None, None),
    };

    Container {
        name: names::CONTAINER_NAME.to_owned(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(args),
        env: Some(vec![
            field_env(names::ENV_POD_NAME, "metadata.name"),
            field_env(names::ENV_POD_NAMESPACE, "metadata.namespace"),
            field_env(names::ENV_POD_UID, "metadata.uid"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: i32::from(cfg.port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..ResourceRequirements::default()
        }),
        liveness_probe: Some(liveness),
        readiness_probe: Some(readiness),
        startup_probe,
        restart_policy,
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_owned(),
            mount_path: TOKEN_MOUNT_PATH.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

/// The projected volume that gives the watchdog its own service-account
/// token, CA and namespace, whatever the admission order: the
/// ServiceAccount admission plugin mounts the token only into containers
/// that exist when it runs, which is before this webhook.
pub fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".to_owned(),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        audience: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".to_owned(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".to_owned(),
                            path: "ca.crt".to_owned(),
                            mode: None,
                        }]),
                        optional: Some(true),
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".to_owned(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".to_owned()),
                                field_path: "metadata.namespace".to_owned(),
                            }),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
        }),
        ..Volume::default()
    }
}

/// Checks that `s` is a Kubernetes resource quantity (e.g. `10m`, `64Mi`,
/// `1.5`, `1e3`). A bad quantity in the patch would make the API server
/// reject every listener pod, so the webhook refuses to start with one.
pub fn validate_quantity(s: &str) -> Result<(), String> {
    let err = || format!("invalid quantity {s:?} (expected e.g. 10m, 16Mi, 1)");
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let dots = number.matches('.').count();
    if number.is_empty() || number == "." || dots > 1 {
        return Err(err());
    }
    let ok_suffix = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    if ok_suffix { Ok(()) } else { Err(err()) }
}

#[cfg(test)]
mod tests;
