use super::release::Pods;
use super::*;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const START: &str = "2025-01-01T00:00:00Z";

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn waiting(reason: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message: Some(format!("{reason} details")),
        }),
        ..ContainerState::default()
    }
}

fn running() -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(Time(at(START))),
        }),
        ..ContainerState::default()
    }
}

fn terminated(code: i32) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some("Error".to_owned()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    }
}

fn cs(name: &str, state: ContainerState, started: bool, restarts: i32) -> ContainerStatus {
    ContainerStatus {
        name: name.to_owned(),
        state: Some(state),
        started: Some(started),
        restart_count: restarts,
        ..ContainerStatus::default()
    }
}

/// A native-injected listener pod whose watchdog is in `watchdog` and
/// whose listener waits (PodInitializing).
fn pod(watchdog: ContainerStatus) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("set-listener".to_owned()),
            namespace: Some("arc-systems".to_owned()),
            uid: Some("uid-1".to_owned()),
            labels: Some(
                [(
                    names::LISTENER_COMPONENT_LABEL.to_owned(),
                    names::LISTENER_COMPONENT_VALUE.to_owned(),
                )]
                .into(),
            ),
            annotations: Some(
                [(names::ANNOTATION_INJECTED.to_owned(), "native".to_owned())].into(),
            ),
            creation_timestamp: Some(Time(at("2024-12-31T23:59:00Z"))),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(vec![Container {
                name: names::CONTAINER_NAME.to_owned(),
                ..Container::default()
            }]),
            containers: vec![Container {
                name: names::LISTENER_CONTAINER.to_owned(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Pending".to_owned()),
            start_time: Some(Time(at(START))),
            init_container_statuses: Some(vec![watchdog]),
            container_statuses: Some(vec![cs(
                names::LISTENER_CONTAINER,
                waiting("PodInitializing"),
                false,
                0,
            )]),
            ..PodStatus::default()
        }),
    }
}

fn failing(cause: &str) -> Held {
    Held::Failing {
        since: at(START),
        cause: cause.to_owned(),
    }
}

#[test]
fn a_watchdog_that_cannot_be_pulled_created_or_run_holds_its_listener() {
    for reason in STUCK_REASONS.iter().filter(|r| **r != "CrashLoopBackOff") {
        let p = pod(cs(names::CONTAINER_NAME, waiting(reason), false, 0));
        assert_eq!(
            classify(&p),
            failing(&format!("{reason}: {reason} details")),
            "{reason}"
        );
    }
}

#[test]
fn a_crashing_watchdog_holds_its_listener_only_once_it_keeps_crashing() {
    let once = pod(cs(
        names::CONTAINER_NAME,
        waiting("CrashLoopBackOff"),
        false,
        1,
    ));
    assert_eq!(classify(&once), Held::No, "one crash is a restart");
    let looping = pod(cs(
        names::CONTAINER_NAME,
        waiting("CrashLoopBackOff"),
        false,
        CRASH_RESTARTS,
    ));
    assert_eq!(
        classify(&looping),
        failing("CrashLoopBackOff: CrashLoopBackOff details")
    );
    let exited = pod(cs(names::CONTAINER_NAME, terminated(1), false, 1));
    assert_eq!(classify(&exited), Held::No);
    let exits = pod(cs(
        names::CONTAINER_NAME,
        terminated(2),
        false,
        CRASH_RESTARTS,
    ));
    assert_eq!(
        classify(&exits),
        failing("exited with code 2 (Error) after 3 restarts")
    );
}

#[test]
fn a_watchdog_holding_its_gate_on_purpose_is_left_alone() {
    // Running, start probe failing: the backoff, whatever its length
    // and even after restarts.
    for restarts in [0, CRASH_RESTARTS + 5] {
        let p = pod(cs(names::CONTAINER_NAME, running(), false, restarts));
        assert_eq!(classify(&p), Held::Gated);
        assert_eq!(
            blocked(&p, at("2025-01-02T00:00:00Z"), Duration::from_secs(1)),
            None
        );
    }
}

#[test]
fn started_watchdogs_started_listeners_and_the_pods_own_start_up_are_not_held() {
    let started = pod(cs(names::CONTAINER_NAME, running(), true, 0));
    assert_eq!(classify(&started), Held::No);
    // The pod's volumes or the listener's Secret: not the watchdog.
    for reason in ["ContainerCreating", "PodInitializing"] {
        let p = pod(cs(names::CONTAINER_NAME, waiting(reason), false, 0));
        assert_eq!(classify(&p), Held::No, "{reason}");
    }
    // The listener runs: whatever happens to the watchdog now does not
    // hold it.
    let mut listener_runs = pod(cs(
        names::CONTAINER_NAME,
        waiting("ImagePullBackOff"),
        false,
        0,
    ));
    if let Some(s) = listener_runs.status.as_mut() {
        s.container_statuses = Some(vec![cs(names::LISTENER_CONTAINER, running(), true, 0)]);
    }
    assert_eq!(classify(&listener_runs), Held::No);
    // No report from the kubelet yet.
    let mut unscheduled = pod(cs(
        names::CONTAINER_NAME,
        waiting("ImagePullBackOff"),
        false,
        0,
    ));
    unscheduled.status = None;
    assert_eq!(classify(&unscheduled), Held::No);
}

#[test]
fn only_native_live_listeners_count() {
    let stuck = || {
        pod(cs(
            names::CONTAINER_NAME,
            waiting("ImagePullBackOff"),
            false,
            0,
        ))
    };
    let mut classic = stuck();
    classic.metadata.annotations =
        Some([(names::ANNOTATION_INJECTED.to_owned(), "classic".to_owned())].into());
    assert_eq!(
        classify(&classic),
        Held::No,
        "a regular container holds nothing"
    );
    let mut deleting = stuck();
    deleting.metadata.deletion_timestamp = Some(Time(at(START)));
    assert_eq!(classify(&deleting), Held::No);
    let mut failed = stuck();
    if let Some(s) = failed.status.as_mut() {
        s.phase = Some("Failed".to_owned());
    }
    assert_eq!(classify(&failed), Held::No);
    let mut not_listener = stuck();
    not_listener.metadata.labels = None;
    assert_eq!(classify(&not_listener), Held::No);
}

#[test]
fn blocked_only_after_the_bound_from_when_the_kubelet_took_the_pod() {
    let p = pod(cs(
        names::CONTAINER_NAME,
        waiting("ImagePullBackOff"),
        false,
        0,
    ));
    let bound = Duration::from_secs(120);
    assert_eq!(blocked(&p, at("2025-01-01T00:01:59Z"), bound), None);
    let b = blocked(&p, at("2025-01-01T00:02:00Z"), bound).unwrap();
    assert_eq!(
        (b.namespace.as_str(), b.name.as_str(), b.uid.as_str()),
        ("arc-systems", "set-listener", "uid-1")
    );
    assert_eq!(b.since, at(START));
    assert_eq!(b.cause, "ImagePullBackOff: ImagePullBackOff details");
    // Without a start time, the creation time counts.
    let mut no_start = p.clone();
    if let Some(s) = no_start.status.as_mut() {
        s.start_time = None;
    }
    assert!(blocked(&no_start, at("2025-01-01T00:01:00Z"), bound).is_some());
}

#[test]
fn suspended_pods_are_counted_while_they_live() {
    let mut p = pod(cs(names::CONTAINER_NAME, running(), true, 0));
    assert!(!runs_suspended(&p));
    p.metadata.annotations = Some(
        [(
            names::ANNOTATION_POD_SUSPENDED.to_owned(),
            "2025-01-01T01:00:00Z".to_owned(),
        )]
        .into(),
    );
    assert!(runs_suspended(&p));
    p.metadata.deletion_timestamp = Some(Time(at(START)));
    assert!(!runs_suspended(&p));
}

#[test]
fn event_is_a_named_warning_on_the_pod_that_says_what_happened_and_what_to_do() {
    let b = Blocked {
        namespace: "arc-systems".into(),
        name: "set-listener".into(),
        uid: "uid-1".into(),
        since: at(START),
        cause: "ImagePullBackOff: no such image".into(),
    };
    let owner = crate::owner::owner_reference("arc-watchdog", "cfg-uid");
    let e = event_for(
        &b,
        at("2025-01-01T01:02:00Z"),
        "replica-1",
        Some(&owner),
        at("2025-01-01T00:02:00Z"),
    );
    assert_eq!(
        e.metadata.name.as_deref(),
        Some("arc-watchdog-suspended-uid-1")
    );
    assert_eq!(e.metadata.owner_references, Some(vec![owner]));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reason.as_deref(), Some("InjectionSuspended"));
    let regarding = e.regarding.unwrap();
    assert_eq!(regarding.uid.as_deref(), Some("uid-1"));
    let note = e.note.unwrap();
    for part in [
        "for 120s",
        "ImagePullBackOff: no such image",
        "until 2025-01-01T01:02:00Z",
        "arc-watchdog.set-listener",
        names::ANNOTATION_SUSPENDED_UNTIL,
    ] {
        assert!(note.contains(part), "{part}: {note}");
    }
    assert!(note.len() <= 1024);
    let long = Blocked {
        cause: "x".repeat(2000),
        ..b
    };
    let e = event_for(&long, at(START), " ", None, at(START));
    assert!(e.note.unwrap().len() <= 1024);
    assert_eq!(
        e.reporting_instance.as_deref(),
        Some("arc-watchdog-webhook")
    );
}

#[test]
fn relists_replace_a_namespace_only() {
    let p = |name: &str| Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    let mut pods = Pods::default();
    pods.apply("a", watcher::Event::Apply(p("x")));
    pods.apply("b", watcher::Event::Apply(p("y")));
    pods.apply("a", watcher::Event::Init);
    pods.apply("a", watcher::Event::InitApply(p("z")));
    assert_eq!(pods.live.len(), 2, "the old state stands during a relist");
    pods.apply("a", watcher::Event::InitDone);
    let keys: Vec<_> = pods.live.keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            ("a".to_owned(), "z".to_owned()),
            ("b".to_owned(), "y".to_owned())
        ]
    );
    pods.apply("b", watcher::Event::Delete(p("y")));
    assert_eq!(pods.live.len(), 1);
}

#[test]
fn a_slim_pod_is_judged_as_the_whole_pod_and_keeps_only_what_is_read() {
    let with_extras = |mut p: Pod| {
        p.metadata.managed_fields = Some(vec![Default::default(); 3]);
        p.metadata
            .annotations
            .get_or_insert_default()
            .insert("other".to_owned(), "x".repeat(1000));
        p.metadata.owner_references = Some(vec![OwnerReference {
            kind: names::AUTOSCALING_LISTENER_KIND.to_owned(),
            name: "set-listener".to_owned(),
            uid: "al-1".to_owned(),
            ..OwnerReference::default()
        }]);
        if let Some(s) = p.spec.as_mut() {
            s.containers[0].image = Some("listener:1".to_owned());
            s.containers.push(Container {
                name: "extra".to_owned(),
                ..Container::default()
            });
        }
        if let Some(s) = p.status.as_mut() {
            s.pod_ip = Some("10.0.0.1".to_owned());
            s.init_container_statuses.get_or_insert_default().push(cs(
                "other-init",
                running(),
                true,
                0,
            ));
        }
        p
    };
    let mut suspended = pod(cs(names::CONTAINER_NAME, running(), true, 0));
    suspended.metadata.annotations = Some(
        [(
            names::ANNOTATION_POD_SUSPENDED.to_owned(),
            "2025-01-01T01:00:00Z".to_owned(),
        )]
        .into(),
    );
    let mut crashed = pod(cs(names::CONTAINER_NAME, terminated(1), false, 3));
    if let Some(s) = crashed.status.as_mut() {
        s.start_time = None;
    }
    let pods = [
        pod(cs(names::CONTAINER_NAME, waiting("ErrImagePull"), false, 0)),
        pod(cs(
            names::CONTAINER_NAME,
            waiting("CrashLoopBackOff"),
            false,
            5,
        )),
        pod(cs(
            names::CONTAINER_NAME,
            waiting("ContainerCreating"),
            false,
            0,
        )),
        pod(cs(names::CONTAINER_NAME, running(), false, 0)),
        pod(cs(names::CONTAINER_NAME, running(), true, 0)),
        crashed,
        suspended,
    ];
    let now = at("2025-01-01T00:10:00Z");
    let bound = Duration::from_secs(120);
    for whole in pods.into_iter().map(with_extras) {
        let kept = slim(whole.clone());
        assert_eq!(classify(&kept), classify(&whole), "{whole:?}");
        assert_eq!(blocked(&kept, now, bound), blocked(&whole, now, bound));
        assert_eq!(runs_suspended(&kept), runs_suspended(&whole));
        assert_eq!(
            kept.metadata.owner_references,
            whole.metadata.owner_references
        );
        assert_eq!(kept.metadata.managed_fields, None);
        let annotations = kept.metadata.annotations.unwrap_or_default();
        assert!(!annotations.contains_key("other"), "{annotations:?}");
        let spec = kept.spec.unwrap_or_default();
        assert_eq!(spec.containers.len(), 2);
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(spec.init_containers, None);
        let status = kept.status.unwrap_or_default();
        assert_eq!(status.pod_ip, None);
        assert_eq!(
            status.init_container_statuses.unwrap_or_default().len(),
            1,
            "only the watchdog's status"
        );
    }
}

#[test]
fn the_release_keeps_pods_slim() {
    let mut pods = Pods::default();
    let mut whole = pod(cs(names::CONTAINER_NAME, running(), true, 0));
    whole.metadata.managed_fields = Some(vec![Default::default()]);
    pods.apply("arc-systems", watcher::Event::Apply(whole.clone()));
    pods.apply("arc-systems", watcher::Event::Init);
    pods.apply("arc-systems", watcher::Event::InitApply(whole.clone()));
    pods.apply("arc-systems", watcher::Event::InitDone);
    let kept: Vec<&Pod> = pods.live.values().collect();
    assert_eq!(kept, vec![&slim(whole)]);
}
