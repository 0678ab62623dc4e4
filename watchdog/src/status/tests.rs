//! One test per state, over objects shaped like ARC's and arc-watchdog's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use serde_json::json;

use super::*;
use crate::detector::{ANNOTATION_HISTORY, Cause, History, LoopState};

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

const NOW: i64 = 10_000;

fn ars(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingRunnerSet",
        "metadata": {"name": name, "namespace": "arc-runners", "uid": format!("ars-{name}"),
            "creationTimestamp": t(0).to_string(),
            "labels": {"app.kubernetes.io/version": "0.14.2"}},
    }))
    .unwrap()
}

fn al(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingListener",
        "metadata": {"name": format!("{name}-listener"), "namespace": "arc-systems",
            "uid": format!("al-{name}"), "creationTimestamp": t(10).to_string()},
        "spec": {"autoscalingRunnerSetName": name, "autoscalingRunnerSetNamespace": "arc-runners"},
    }))
    .unwrap()
}

/// A listener pod of `name`, with the watchdog injected as `mode`
/// (`native`, `classic`) or not (`None`), in `phase`.
fn pod(name: &str, mode: Option<&str>, phase: &str, created: i64) -> Pod {
    let watchdog =
        json!({"name": "arc-watchdog", "image": "x", "args": ["run", "--eviction-budget=3"]});
    let mut spec =
        json!({"containers": [{"name": "listener", "image": "x"}], "nodeName": "node-a"});
    let mut annotations = json!({});
    match mode {
        Some("native") => spec["initContainers"] = json!([watchdog]),
        Some(_) => spec["containers"].as_array_mut().unwrap().push(watchdog),
        None => {}
    }
    if let Some(m) = mode {
        annotations["arc-watchdog.dev/injected"] = json!(m);
    }
    let running = json!([{"name": "listener", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
        "state": {"running": {"startedAt": t(created + 5).to_string()}}}]);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-listener"), "namespace": "arc-systems",
            "creationTimestamp": t(created).to_string(), "annotations": annotations,
            "labels": {"app.kubernetes.io/component": "runner-scale-set-listener",
                "actions.github.com/scale-set-name": name, "actions.github.com/scale-set-namespace": "arc-runners"},
            "ownerReferences": [{"apiVersion": "actions.github.com/v1alpha1", "kind": "AutoscalingListener",
                "name": format!("{name}-listener"), "uid": format!("al-{name}")}]},
        "spec": spec,
        "status": if phase == "Running" { json!({"phase": phase, "containerStatuses": running}) } else { json!({"phase": phase}) },
    }))
    .unwrap()
}

fn lease(name: &str, history: &History) -> Lease {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": format!("arc-watchdog.{name}-listener"), "namespace": "arc-systems",
            "annotations": {ANNOTATION_HISTORY: history.to_json()}},
    }))
    .unwrap()
}

fn inputs(sets: &[&str], listeners: &[&str], pods: Vec<Pod>, leases: Vec<Lease>) -> Inputs {
    Inputs {
        runner_sets: Some(sets.iter().map(|s| ars(s)).collect()),
        listeners: Some(listeners.iter().map(|s| al(s)).collect()),
        pods: Some(pods),
        leases: Some(leases),
        ..Inputs::default()
    }
}

fn one(inputs: &Inputs) -> Row {
    let report = assess(inputs, &Options::default(), t(NOW));
    assert_eq!(report.rows.len(), 1, "{report:#?}");
    report.rows[0].clone()
}

fn looping(conflict: bool, not_before: i64, duplicate: bool) -> History {
    History {
        conflicts: vec![t(NOW - 300), t(NOW - 200), t(NOW - 100)],
        evictions: vec![t(NOW - 250)],
        loop_state: Some(LoopState {
            since: t(NOW - 100),
            cause: if conflict {
                Cause::SessionConflict
            } else {
                Cause::Auth
            },
            conflict_loop: conflict,
            crash_loop: !conflict,
            delay_ms: 30_000,
            not_before: t(not_before),
            last_failure: t(NOW - 100),
            times_at_cap: 0,
            waited_ms: 0,
            duplicate_suspected: duplicate,
        }),
        ..History::default()
    }
}

#[test]
fn a_running_listener_without_a_loop_is_healthy() {
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("native"), "Running", 100)],
        vec![],
    ));
    assert_eq!(row.state, State::Healthy);
    assert_eq!(row.watchdog, Watchdog::Native);
    assert_eq!(row.arc_version.as_deref(), Some("0.14.2"));
    assert_eq!(row.listener.as_deref(), Some("a-listener"));
    assert_eq!(row.listener_namespace.as_deref(), Some("arc-systems"));
    assert_eq!(row.since, Some(t(105)));
    assert_eq!(row.conflicts_in_window, Some(0));
    let report = assess(
        &inputs(
            &["a"],
            &["a"],
            vec![pod("a", Some("classic"), "Running", 100)],
            vec![],
        ),
        &Options::default(),
        t(NOW),
    );
    assert!(report.healthy);
    assert_eq!(report.rows[0].watchdog, Watchdog::Classic);
    assert_eq!(ExitStatus::of(&report), ExitStatus::Healthy);
}

/// `pod` with its watchdog container running since `started` and ready
/// or not, as the kubelet reports it.
fn with_watchdog_status(mut pod: Pod, ready: bool, started: i64) -> Pod {
    let native = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some();
    let status: k8s_openapi::api::core::v1::ContainerStatus = serde_json::from_value(json!({
        "name": "arc-watchdog", "image": "x", "imageID": "", "ready": ready, "restartCount": 0,
        "started": true, "state": {"running": {"startedAt": t(started).to_string()}}}))
    .unwrap();
    let s = pod.status.as_mut().unwrap();
    if native {
        s.init_container_statuses = Some(vec![status]);
    } else {
        s.container_statuses.as_mut().unwrap().push(status);
    }
    pod
}

#[test]
fn a_watchdog_reporting_not_ready_fails_open_once_its_readiness_settled() {
    for mode in ["native", "classic"] {
        let running = || pod("a", Some(mode), "Running", 100);
        let failing = one(&inputs(
            &["a"],
            &["a"],
            vec![with_watchdog_status(running(), false, NOW - 60)],
            vec![],
        ));
        assert_eq!(failing.state, State::FailingOpen, "{mode}");
        assert!(failing.detail.contains("fails open"), "{}", failing.detail);
        assert_eq!(failing.since, Some(t(105)), "{mode}");
        let report = assess(
            &inputs(
                &["a"],
                &["a"],
                vec![with_watchdog_status(running(), false, NOW - 60)],
                vec![],
            ),
            &Options::default(),
            t(NOW),
        );
        assert_eq!(ExitStatus::of(&report), ExitStatus::Unhealthy, "{mode}");

        // Ready, or not ready only because no probe has passed yet.
        for (ready, started) in [(true, NOW - 60), (false, NOW - 5)] {
            let row = one(&inputs(
                &["a"],
                &["a"],
                vec![with_watchdog_status(running(), ready, started)],
                vec![],
            ));
            assert_eq!(
                row.state,
                State::Healthy,
                "{mode} ready={ready} started={started}"
            );
        }
    }
    // A pod without the watchdog has no watchdog readiness to read.
    let mut unwatched = pod("a", None, "Running", 100);
    unwatched
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap()[0]
        .ready = false;
    assert_eq!(
        one(&inputs(&["a"], &["a"], vec![unwatched], vec![])).state,
        State::Healthy
    );
}

#[test]
fn a_conflict_loop_past_its_delay_is_a_conflict_loop_with_counts_and_last_decision() {
    let h = looping(true, NOW - 50, false);
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("native"), "Running", 100)],
        vec![lease("a", &h)],
    ));
    assert_eq!(row.state, State::ConflictLoop);
    assert_eq!(row.cause, Some(Cause::SessionConflict));
    assert_eq!(row.since, Some(t(NOW - 100)));
    assert_eq!(row.conflicts_in_window, Some(3));
    assert_eq!(row.evictions_last_hour, Some(1));
    let last = row.last_decision.unwrap();
    assert_eq!(
        (last.reason.as_str(), last.at),
        ("ConflictLoopDetected", t(NOW - 100))
    );
}

#[test]
fn the_window_bounds_the_conflicts_counted() {
    let h = looping(true, NOW - 50, false);
    let options = Options {
        window: Duration::from_secs(250),
        ..Options::default()
    };
    let report = assess(
        &inputs(
            &["a"],
            &["a"],
            vec![pod("a", Some("native"), "Running", 100)],
            vec![lease("a", &h)],
        ),
        &options,
        t(NOW),
    );
    assert_eq!(report.rows[0].conflicts_in_window, Some(2));
    assert_eq!(ExitStatus::of(&report), ExitStatus::Unhealthy);
}

#[test]
fn a_crash_loop_names_its_cause() {
    let h = looping(false, NOW - 50, false);
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("native"), "Running", 100)],
        vec![lease("a", &h)],
    ));
    assert_eq!(row.state, State::CrashLoop);
    assert_eq!(row.cause, Some(Cause::Auth));
    assert_eq!(render::state_text(&row), "crash loop (auth)");
    assert_eq!(row.last_decision.unwrap().reason, "CrashLoopDetected");
}

#[test]
fn a_closed_gate_is_a_start_delay_until_its_end() {
    let h = looping(true, NOW + 60, false);
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("native"), "Pending", NOW - 10)],
        vec![lease("a", &h)],
    ));
    assert_eq!(row.state, State::StartDelayed);
    assert_eq!(row.delayed_until, Some(t(NOW + 60)));
    assert!(render::state_text(&row).starts_with("start delayed until "));
}

#[test]
fn a_dry_run_watchdog_is_shown_as_such_and_never_delays() {
    let h = looping(true, NOW + 60, false);
    let mut p = pod("a", Some("native"), "Running", 100);
    p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].args =
        Some(vec!["run".into(), "--dry-run".into()]);
    let row = one(&inputs(&["a"], &["a"], vec![p], vec![lease("a", &h)]));
    assert_eq!(row.watchdog, Watchdog::DryRun);
    assert_eq!(row.state, State::ConflictLoop);
}

#[test]
fn a_listener_released_by_the_webhook_runs_with_injection_suspended() {
    let mut p = pod("a", None, "Running", 100);
    p.metadata.annotations.get_or_insert_default().insert(
        arc_watchdog_core::names::ANNOTATION_POD_SUSPENDED.to_owned(),
        "2026-12-05T13:00:00Z".to_owned(),
    );
    let row = one(&inputs(&["a"], &["a"], vec![p], vec![]));
    assert_eq!(row.watchdog, Watchdog::Suspended);
    assert_eq!(row.state, State::Healthy);
    assert!(
        row.detail.contains("2026-12-05T13:00:00Z"),
        "{}",
        row.detail
    );
}

#[test]
fn a_persistent_conflict_is_a_suspected_duplicate() {
    let h = looping(true, NOW + 60, true);
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("native"), "Running", 100)],
        vec![lease("a", &h)],
    ));
    assert_eq!(row.state, State::DuplicateSuspected);
}

#[test]
fn a_spent_budget_with_an_eviction_waiting_is_budget_exhausted() {
    let mut h = looping(true, NOW - 50, false);
    h.evictions = vec![t(NOW - 900), t(NOW - 600), t(NOW - 300)];
    h.pending_eviction = Some(crate::detector::PendingEviction {
        at: t(NOW + 2700),
        cause: crate::detector::EvictCause::ListenerDead,
    });
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("classic"), "Running", 100)],
        vec![lease("a", &h)],
    ));
    assert_eq!(row.state, State::BudgetExhausted);
    assert_eq!(row.evictions_last_hour, Some(3));
    let last = row.last_decision.unwrap();
    assert_eq!(
        (last.reason.as_str(), last.at),
        ("ConflictLoopDetected", t(NOW - 100))
    );
    // An eviction after the loop's latest step is the latest decision.
    h.evictions.push(t(NOW - 20));
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("classic"), "Running", 100)],
        vec![lease("a", &h)],
    ));
    let last = row.last_decision.unwrap();
    assert_eq!(
        (last.reason.as_str(), last.at),
        ("ListenerEvicted", t(NOW - 20))
    );
}

#[test]
fn no_autoscaling_listener_means_the_listener_is_missing() {
    let row = one(&inputs(&["a"], &[], vec![], vec![]));
    assert_eq!(row.state, State::ListenerMissing);
    assert_eq!(row.missing, Some(Missing::NoAutoscalingListener));
    assert_eq!(row.since, Some(t(0)));
    assert_eq!(row.watchdog, Watchdog::Unknown);
}

#[test]
fn a_listener_without_pod_means_the_listener_is_missing() {
    let row = one(&inputs(&["a"], &["a"], vec![], vec![]));
    assert_eq!(row.missing, Some(Missing::NoPod));
    assert_eq!(row.since, Some(t(10)));
    // Between pod generations the history still shows.
    let h = looping(true, NOW + 60, false);
    let row = one(&inputs(&["a"], &["a"], vec![], vec![lease("a", &h)]));
    assert_eq!(row.missing, Some(Missing::NoPod));
    assert_eq!(row.conflicts_in_window, Some(3));
}

#[test]
fn a_pod_pending_too_long_means_missing_and_a_young_one_is_starting() {
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("native"), "Pending", NOW - 30)],
        vec![],
    ));
    assert_eq!(row.state, State::Starting);
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("native"), "Pending", NOW - 600)],
        vec![],
    ));
    assert_eq!(row.state, State::ListenerMissing);
    assert_eq!(row.missing, Some(Missing::PodPending));
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", Some("native"), "Failed", NOW - 600)],
        vec![],
    ));
    assert_eq!(row.missing, Some(Missing::PodEnded));
}

#[test]
fn a_pod_terminating_on_a_not_ready_node_means_missing() {
    let mut p = pod("a", Some("native"), "Running", 100);
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(
        NOW - 400,
    )));
    let mut i = inputs(&["a"], &["a"], vec![p], vec![]);
    // Terminating on a Ready node: the kubelet is finishing it.
    let row = one(&i);
    assert_eq!(row.pod_phase.as_deref(), Some("Terminating"));
    assert_eq!(row.state, State::Healthy);
    i.not_ready_nodes.insert("node-a".into());
    let row = one(&i);
    assert_eq!(row.missing, Some(Missing::TerminatingOnNotReadyNode));
    assert_eq!(row.since, Some(t(NOW - 400)));
}

#[test]
fn a_listener_without_the_watchdog_is_shown_as_such() {
    let row = one(&inputs(
        &["a"],
        &["a"],
        vec![pod("a", None, "Running", 100)],
        vec![],
    ));
    assert_eq!(row.watchdog, Watchdog::None);
    assert_eq!(row.state, State::Healthy);
    let mut p = pod("a", None, "Running", 100);
    p.metadata.annotations =
        Some([("arc-watchdog.dev/inject".to_owned(), "false".to_owned())].into());
    let row = one(&inputs(&["a"], &["a"], vec![p], vec![]));
    assert_eq!(row.watchdog, Watchdog::OptedOut);
}

#[test]
fn unreadable_leases_make_a_watched_listener_unknown_and_the_report_incomplete() {
    let mut i = inputs(
        &["a", "b"],
        &["a", "b"],
        vec![
            pod("a", Some("native"), "Running", 100),
            pod("b", None, "Running", 100),
        ],
        vec![],
    );
    i.leases = None;
    i.lacked_rights
        .push("list leases.coordination.k8s.io in arc-systems".into());
    let report = assess(&i, &Options::default(), t(NOW));
    assert_eq!(report.rows[0].state, State::Unknown);
    assert_eq!(report.rows[0].conflicts_in_window, None);
    // Without a watchdog there is no history to miss.
    assert_eq!(report.rows[1].state, State::Healthy);
    assert!(!report.healthy);
    assert_eq!(ExitStatus::of(&report), ExitStatus::Incomplete);
    let text = render::render(&report, Output::Table, false, t(NOW));
    assert!(
        text.contains("lacked rights: list leases.coordination.k8s.io in arc-systems"),
        "{text}"
    );
}

#[test]
fn listeners_give_rows_when_runner_sets_cannot_be_read_and_scope_filters() {
    let mut i = inputs(
        &[],
        &["a"],
        vec![pod("a", Some("native"), "Running", 100)],
        vec![],
    );
    i.runner_sets = None;
    let row = one(&i);
    assert_eq!(
        (row.scale_set.as_str(), row.namespace.as_str()),
        ("a", "arc-runners")
    );
    assert_eq!(row.arc_version, None);
    let options = Options {
        scope: Some("elsewhere".into()),
        ..Options::default()
    };
    assert!(assess(&i, &options, t(NOW)).rows.is_empty());
}

#[test]
fn json_uses_the_documented_names() {
    let h = looping(true, NOW + 60, false);
    let report = assess(
        &inputs(
            &["a"],
            &["a"],
            vec![pod("a", Some("native"), "Pending", NOW - 10)],
            vec![lease("a", &h)],
        ),
        &Options::default(),
        t(NOW),
    );
    let v: serde_json::Value =
        serde_json::from_str(&render::render(&report, Output::Json, false, t(NOW))).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["healthy"], false);
    let row = &v["rows"][0];
    for key in [
        "scale_set",
        "namespace",
        "arc_version",
        "listener",
        "listener_namespace",
        "pod_phase",
        "watchdog",
        "state",
        "cause",
        "missing",
        "since",
        "delayed_until",
        "conflicts_in_window",
        "evictions_last_hour",
        "last_decision",
        "detail",
    ] {
        assert!(row.get(key).is_some(), "{key} missing in {row}");
    }
    assert_eq!(row["state"], "start_delayed");
    assert_eq!(row["watchdog"], "native");
    assert_eq!(row["cause"], "session_conflict");
    assert_eq!(row["last_decision"]["reason"], "ConflictLoopDetected");
}

#[test]
fn colour_only_when_asked() {
    let report = assess(
        &inputs(
            &["a"],
            &["a"],
            vec![pod("a", Some("native"), "Running", 100)],
            vec![],
        ),
        &Options::default(),
        t(NOW),
    );
    assert!(!render::render(&report, Output::Wide, false, t(NOW)).contains('\x1b'));
    assert!(
        render::render(&report, Output::Table, true, t(NOW)).contains("\x1b[32mhealthy\x1b[0m")
    );
    assert!(render::render(&report, Output::Wide, false, t(NOW)).contains("DETAIL"));
}

#[test]
fn argv0_names_the_kubectl_plugin() {
    assert!(invoked_as_kubectl_plugin("kubectl-arc_watchdog".as_ref()));
    assert!(invoked_as_kubectl_plugin(
        "/usr/local/bin/kubectl-arc_watchdog".as_ref()
    ));
    assert!(!invoked_as_kubectl_plugin(
        "/usr/local/bin/arc-watchdog".as_ref()
    ));
    assert!(!invoked_as_kubectl_plugin(
        "kubectl-arc_watchdog-old".as_ref()
    ));
}
