use super::*;
use crate::events::REPORTING_CONTROLLER;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, NodeCondition, NodeStatus,
    PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn ars(name: &str) -> RunnerSet {
    RunnerSet {
        namespace: "arc-runners".into(),
        name: name.into(),
        uid: format!("ars-{name}"),
        created: Some(at(0)),
    }
}

fn al(set: &str) -> Listener {
    Listener {
        namespace: "arc-systems".into(),
        name: format!("{set}-listener"),
        uid: format!("al-{set}"),
        runner_set: ("arc-runners".into(), set.into()),
        created: Some(at(10)),
    }
}

fn pod(set: &str, uid: &str, phase: PodPhase) -> ListenerPod {
    ListenerPod {
        namespace: "arc-systems".into(),
        name: format!("{set}-listener"),
        uid: uid.into(),
        owner: Some((format!("al-{set}"), format!("{set}-listener"))),
        created: Some(at(20)),
        deleting: None,
        node: Some("node-a".into()),
        phase,
    }
}

fn view(sets: &[&str]) -> View {
    View {
        runner_sets: sets.iter().map(|s| ars(s)).collect(),
        ..View::default()
    }
}

fn only(view: &View) -> Option<Finding> {
    classify(view).into_values().next()
}

#[test]
fn each_reason_from_the_objects() {
    // No listener.
    let mut v = view(&["a"]);
    let f = only(&v).unwrap();
    assert_eq!(f.reason, Missing::NoAutoscalingListener);
    assert_eq!((f.since, f.object_uid.as_str()), (at(0), "ars-a"));

    // A listener of another scale set (same name, other namespace) does
    // not count.
    let mut other = al("a");
    other.runner_set.0 = "elsewhere".into();
    v.listeners.push(other);
    assert_eq!(only(&v).unwrap().reason, Missing::NoAutoscalingListener);

    // Listener without a pod.
    v.listeners = vec![al("a")];
    let f = only(&v).unwrap();
    assert_eq!(f.reason, Missing::NoPod);
    assert_eq!((f.since, f.object_uid.as_str()), (at(10), "al-a"));
    assert_eq!(
        f.listener,
        Some(("arc-systems".to_owned(), "a-listener".to_owned()))
    );

    // A pod owned by someone else is not its pod.
    let mut stray = pod("a", "p0", PodPhase::Running);
    stray.owner = Some(("al-other".into(), "other-listener".into()));
    v.pods = vec![stray];
    assert_eq!(only(&v).unwrap().reason, Missing::NoPod);

    // Pending, ended.
    v.pods = vec![pod("a", "p1", PodPhase::Pending)];
    let f = only(&v).unwrap();
    assert_eq!(f.reason, Missing::PodPending);
    assert_eq!((f.since, f.object_uid.as_str()), (at(20), "p1"));
    v.pods = vec![pod("a", "p1", PodPhase::Ended)];
    assert_eq!(only(&v).unwrap().reason, Missing::PodEnded);

    // Running, or held by the watchdog's start gate on purpose: fine.
    for phase in [PodPhase::Running, PodPhase::Gated] {
        v.pods = vec![pod("a", "p1", phase)];
        assert_eq!(only(&v), None, "{phase:?}");
    }
}

#[test]
fn terminating_counts_only_on_a_not_ready_node() {
    let mut v = view(&["a"]);
    v.listeners = vec![al("a")];
    let mut deleting = pod("a", "p1", PodPhase::Running);
    deleting.deleting = Some(at(100));
    v.pods = vec![deleting];
    // Its kubelet ends it and ARC makes the next: not missing yet.
    assert_eq!(only(&v), None);

    v.not_ready.insert("node-a".into(), at(50));
    let f = only(&v).unwrap();
    assert_eq!(f.reason, Missing::TerminatingOnNotReadyNode);
    assert_eq!(f.since, at(100));
    assert_eq!(f.node_not_ready_since, Some(at(50)));
    assert_eq!(f.pod.as_ref().map(|p| p.uid.as_str()), Some("p1"));

    // Once ARC made a new pod beside it, the new one is what counts.
    let mut fresh = pod("a", "p2", PodPhase::Running);
    fresh.created = Some(at(5));
    v.pods.push(fresh);
    assert_eq!(only(&v), None);
}

#[test]
fn pods_convert_with_the_status_rules() {
    let mut p = Pod {
        metadata: ObjectMeta {
            name: Some("a-listener".into()),
            namespace: Some("arc-systems".into()),
            uid: Some("p1".into()),
            owner_references: Some(vec![OwnerReference {
                kind: names::AUTOSCALING_LISTENER_KIND.into(),
                name: "a-listener".into(),
                uid: "al-a".into(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-a".into()),
            containers: vec![Container {
                name: names::LISTENER_CONTAINER.into(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    };
    let lp = ListenerPod::of(&p).unwrap();
    assert_eq!(lp.phase, PodPhase::Pending, "no status yet");
    assert_eq!(lp.owner, Some(("al-a".to_owned(), "a-listener".to_owned())));
    assert_eq!(lp.node.as_deref(), Some("node-a"));
    for (phase, want) in [
        ("Running", PodPhase::Running),
        ("Unknown", PodPhase::Running),
        ("Failed", PodPhase::Ended),
        ("Succeeded", PodPhase::Ended),
        ("Pending", PodPhase::Pending),
    ] {
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            ..PodStatus::default()
        });
        assert_eq!(ListenerPod::of(&p).unwrap().phase, want, "{phase}");
    }
    // Pending behind a running native watchdog that holds the start gate.
    p.metadata.labels = Some(
        [(
            names::LISTENER_COMPONENT_LABEL.to_owned(),
            names::LISTENER_COMPONENT_VALUE.to_owned(),
        )]
        .into(),
    );
    p.metadata.annotations =
        Some([(names::ANNOTATION_INJECTED.to_owned(), "native".to_owned())].into());
    p.status = Some(PodStatus {
        phase: Some("Pending".into()),
        init_container_statuses: Some(vec![ContainerStatus {
            name: names::CONTAINER_NAME.into(),
            started: Some(false),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    assert_eq!(ListenerPod::of(&p).unwrap().phase, PodPhase::Gated);
}

#[test]
fn nodes_are_not_ready_unless_ready_is_true() {
    let node = |status: Option<&str>| Node {
        status: Some(NodeStatus {
            conditions: status.map(|s| {
                vec![NodeCondition {
                    type_: "Ready".into(),
                    status: s.into(),
                    last_transition_time: Some(Time(at(7))),
                    ..NodeCondition::default()
                }]
            }),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    assert_eq!(not_ready_since(&node(Some("True"))), None);
    assert_eq!(not_ready_since(&node(Some("False"))), Some(at(7)));
    assert_eq!(not_ready_since(&node(Some("Unknown"))), Some(at(7)));
    assert_eq!(not_ready_since(&node(None)), Some(Timestamp::UNIX_EPOCH));
}

#[test]
fn tracker_reports_once_after_the_bound_and_forgets_when_healthy() {
    let bound = Duration::from_secs(300);
    let mut t = Tracker::new(bound);
    let mut v = view(&["a"]);
    v.listeners = vec![al("a")];
    let findings = classify(&v);
    // First seen long after the listener was created: the bound counts
    // from now, not from the listener's creation.
    t.update(&findings, at(1000));
    assert!(t.to_report(&findings, at(1000)).is_empty());
    assert_eq!(t.counts(&findings, at(1299))[&Missing::NoPod], 0);
    assert!(t.to_report(&findings, at(1299)).is_empty());
    let due = t.to_report(&findings, at(1300));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].since, at(1000));
    assert_eq!(t.counts(&findings, at(1300))[&Missing::NoPod], 1);
    assert_eq!(
        t.counts(&findings, at(1300))[&Missing::PodPending],
        0,
        "every reason has a count"
    );
    t.mark_reported(&due[0].finding);
    assert!(t.to_report(&findings, at(2000)).is_empty(), "once");

    // Another reason in the same episode is reported too, without a new
    // wait: the listener has been missing since the episode began.
    v.pods = vec![pod("a", "p1", PodPhase::Pending)];
    let findings = classify(&v);
    t.update(&findings, at(2000));
    assert_eq!(t.to_report(&findings, at(2000)).len(), 1);

    // Healthy: forgotten; missing again later waits for the bound again.
    v.pods = vec![pod("a", "p1", PodPhase::Running)];
    t.update(&classify(&v), at(2001));
    assert_eq!(t.counts(&classify(&v), at(2001)).values().sum::<usize>(), 0);
    v.pods.clear();
    let findings = classify(&v);
    t.update(&findings, at(3000));
    assert!(t.to_report(&findings, at(3100)).is_empty());
    assert_eq!(t.to_report(&findings, at(3300)).len(), 1);
}

#[test]
fn the_bound_never_starts_before_the_objects_say() {
    let mut t = Tracker::new(Duration::from_secs(60));
    let mut v = view(&["a"]);
    v.listeners = vec![al("a")];
    let mut deleting = pod("a", "p1", PodPhase::Running);
    // Deleted with a grace period ending at 500.
    deleting.deleting = Some(at(500));
    v.pods = vec![deleting];
    v.not_ready.insert("node-a".into(), at(0));
    let findings = classify(&v);
    t.update(&findings, at(100));
    assert!(t.to_report(&findings, at(559)).is_empty());
    assert_eq!(t.to_report(&findings, at(560)).len(), 1);
}

#[test]
fn failed_reports_wait_for_the_retry_tick() {
    let mut t = Tracker::new(Duration::ZERO);
    let findings = classify(&view(&["a"]));
    t.update(&findings, at(0));
    let due = t.to_report(&findings, at(0));
    t.mark_failed(&due[0].finding);
    assert!(t.to_report(&findings, at(1)).is_empty());
    t.retry_failed();
    assert_eq!(t.to_report(&findings, at(1)), due);
}

#[test]
fn stuck_pods_wait_for_the_grace_period_and_the_node() {
    let after = Duration::from_secs(300);
    let mut v = view(&["a", "b"]);
    v.listeners = vec![al("a"), al("b")];
    let mut stuck = pod("a", "p1", PodPhase::Running);
    stuck.deleting = Some(at(1000));
    // Pending elsewhere: never a candidate.
    let pending = pod("b", "p2", PodPhase::Pending);
    v.pods = vec![stuck, pending];
    v.not_ready.insert("node-a".into(), at(1100));
    let findings = classify(&v);
    assert!(stuck_pods(&findings, at(1299), after).is_empty());
    assert!(
        stuck_pods(&findings, at(1399), after).is_empty(),
        "the node has been NotReady for less than the bound"
    );
    let due = stuck_pods(&findings, at(1400), after);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].uid, "p1");
    // Back to Ready: the kubelet finishes the deletion itself.
    v.not_ready.clear();
    assert!(stuck_pods(&classify(&v), at(9999), after).is_empty());
}

#[test]
fn budget_caps_actions_per_window() {
    let mut b = Budget::new(2, Duration::from_secs(3600));
    assert!(b.try_spend(at(0)));
    assert!(b.try_spend(at(10)));
    assert!(!b.try_spend(at(20)));
    assert!(!b.try_spend(at(3599)));
    assert!(b.try_spend(at(3600)));
    assert!(!b.try_spend(at(3605)));
    let mut none = Budget::new(0, Duration::from_secs(3600));
    assert!(!none.try_spend(at(0)));
}

#[test]
fn event_is_a_named_warning_on_the_scale_set_that_says_what_to_do() {
    let mut v = view(&["a"]);
    v.listeners = vec![al("a")];
    let mut stuck = pod("a", "0b6e-uid", PodPhase::Running);
    stuck.deleting = Some(at(100));
    v.pods = vec![stuck];
    v.not_ready.insert("node-a".into(), at(50));
    let finding = only(&v).unwrap();
    let due = Due {
        finding,
        since: at(100),
    };
    let owner = crate::owner::owner_reference("arc-watchdog", "cfg-uid");
    let e = event_for(&due, "webhook-7d9-x", Some(&owner), at(500));
    assert_eq!(
        e.metadata.name.as_deref(),
        Some("arc-watchdog-missing-terminating-on-not-ready-node-0b6e-uid")
    );
    assert_eq!(e.metadata.namespace.as_deref(), Some("arc-runners"));
    assert_eq!(e.metadata.owner_references, Some(vec![owner]));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reason.as_deref(), Some("ListenerMissing"));
    let regarding = e.regarding.unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("AutoscalingRunnerSet"));
    assert_eq!(
        regarding.api_version.as_deref(),
        Some("actions.github.com/v1alpha1")
    );
    assert_eq!(regarding.name.as_deref(), Some("a"));
    assert_eq!(regarding.uid.as_deref(), Some("ars-a"));
    assert_eq!(
        e.related.and_then(|r| r.name).as_deref(),
        Some("a-listener")
    );
    let note = e.note.unwrap();
    assert!(note.contains("terminating_on_not_ready_node"), "{note}");
    assert!(note.contains("node-a"), "{note}");
    assert!(
        note.contains("kubectl -n arc-systems delete pod a-listener --grace-period=0 --force"),
        "{note}"
    );
    assert!(note.len() <= 1024);
    assert_eq!(
        e.reporting_controller.as_deref(),
        Some(REPORTING_CONTROLLER)
    );
    assert_eq!(e.reporting_instance.as_deref(), Some("webhook-7d9-x"));
    let blank = event_for(&due, " ", None, at(500));
    assert_eq!(
        blank.reporting_instance.as_deref(),
        Some("arc-watchdog-webhook")
    );

    // Every reason's note names the reason and a way out.
    for reason in Missing::ALL {
        let mut f = due.finding.clone();
        f.reason = reason;
        let note = message(&Due {
            finding: f,
            since: at(0),
        });
        assert!(note.contains(reason.as_str()), "{note}");
        assert!(
            note.contains("kubectl") || note.contains("controller"),
            "{note}"
        );
        assert!(
            event_name(reason, "u").len() < 253 && !event_name(reason, "u").contains('_'),
            "a valid object name"
        );
    }
}
