//! Tests of the mutation: decisions, the container and the patch.

use super::*;

/// A pod owned by an AutoscalingListener whose UID is `uid`.
fn owned_by_listener(uid: &str) -> Pod {
    owned_by(
        names::AUTOSCALING_LISTENER_API_VERSION,
        names::AUTOSCALING_LISTENER_KIND,
        uid,
    )
}

/// A pod with one owner reference.
fn owned_by(api_version: &str, kind: &str, uid: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"ownerReferences": [{
            "apiVersion": api_version,
            "kind": kind,
            "name": "l",
            "uid": uid,
        }]},
    }))
    .unwrap()
}

#[test]
fn only_an_autoscaling_listener_of_arcs_api_gives_its_uid() {
    let uid = "6f1c2d3e-0000-4b00-9c00-00000000a11c";
    // The same kind in another API group, and ARC's group with another kind.
    let other_group = owned_by("example.com/v1", names::AUTOSCALING_LISTENER_KIND, uid);
    assert_eq!(listener_uid(&other_group), None);
    let other_kind = owned_by(
        names::AUTOSCALING_LISTENER_API_VERSION,
        "EphemeralRunner",
        uid,
    );
    assert_eq!(listener_uid(&other_kind), None);
}

#[test]
fn only_a_uid_of_the_shape_kubernetes_gives_becomes_an_argument() {
    let uid = "6f1c2d3e-0000-4b00-9c00-00000000a11c";
    assert_eq!(listener_uid(&owned_by_listener(uid)), Some(uid));
    let longest = "a".repeat(64);
    assert_eq!(listener_uid(&owned_by_listener(&longest)), Some(&*longest));
    // Each rule alone rejects: empty, too long, not hex and dashes.
    for bad in [String::new(), "a".repeat(65), "6f1c 2d3e; x".to_owned()] {
        assert_eq!(listener_uid(&owned_by_listener(&bad)), None, "{bad:?}");
    }
}

#[test]
fn startup_probe_outlasts_longest_backoff_and_grace() {
    let cfg = InjectConfig::new("img");
    let threshold = startup_failure_threshold(&cfg);
    // 10m backoff + 20s grace + 60s margin = 680s = 680 probes of 1s.
    assert_eq!(threshold, 680);
    let covered = Duration::from_secs(u64::try_from(threshold * STARTUP_PERIOD_SECONDS).unwrap());
    assert!(covered >= cfg.thresholds.backoff_max + cfg.fail_open_grace);

    let mut long = cfg.clone();
    long.thresholds.backoff_max = Duration::from_secs(3600);
    assert_eq!(
        startup_failure_threshold(&long),
        (3600 + 20 + 60) / STARTUP_PERIOD_SECONDS
    );

    let mut huge = cfg;
    huge.thresholds.backoff_max = Duration::from_secs(u64::MAX / 2);
    assert_eq!(startup_failure_threshold(&huge), i32::MAX);
}

#[test]
fn quantities() {
    for ok in [
        "10m", "16Mi", "1", "0.5", "+1", "1e3", "1E-2", ".5", "2Gi", "100k",
    ] {
        assert!(validate_quantity(ok).is_ok(), "{ok}");
    }
    for bad in ["", "m", "10mb", "1..2", "Mi", "ten", "1e", "1 Mi", "."] {
        assert!(validate_quantity(bad).is_err(), "{bad}");
    }
}

#[test]
fn classic_container_has_no_gate_and_no_restart_policy() {
    let cfg = InjectConfig::new("img:1");
    let c = watchdog_container(&cfg, SidecarMode::Classic, StartGate::Probed);
    assert!(c.startup_probe.is_none());
    assert!(c.restart_policy.is_none());
    let n = watchdog_container(&cfg, SidecarMode::Native, StartGate::Probed);
    assert_eq!(n.restart_policy.as_deref(), Some("Always"));
    let gate = n.startup_probe.unwrap();
    assert_eq!(
        gate.http_get.unwrap().path.as_deref(),
        Some(names::PATH_STARTZ)
    );
    assert_eq!(gate.period_seconds, Some(STARTUP_PERIOD_SECONDS));
    // No initial delay: the gate is asked from the start.
    assert_eq!(gate.initial_delay_seconds, None);
}

#[test]
fn start_gate_is_probed_as_often_as_kubernetes_allows() {
    // With no backoff pending the listener starts at the first probe
    // after the watchdog serves: the period is what the sidecar adds
    // to every listener start, so it is the least a Probe may have.
    let gate = watchdog_container(
        &InjectConfig::new("img"),
        SidecarMode::Native,
        StartGate::Probed,
    )
    .startup_probe
    .unwrap();
    assert_eq!(gate.period_seconds, Some(1));
}

#[test]
fn args_are_run_then_thresholds() {
    let mut cfg = InjectConfig::new("img");
    cfg.thresholds.dry_run = true;
    let c = watchdog_container(&cfg, SidecarMode::Native, StartGate::Probed);
    let args = c.args.unwrap();
    assert_eq!(args[0], "run");
    assert_eq!(&args[1..], cfg.thresholds.to_args().as_slice());
    assert!(args.contains(&"--dry-run".to_owned()));
}

#[test]
fn another_port_moves_the_server_and_the_probes_follow_its_name() {
    let mut cfg = InjectConfig::new("img");
    let default = watchdog_container(&cfg, SidecarMode::Native, StartGate::Probed);
    assert!(
        !default
            .args
            .unwrap()
            .iter()
            .any(|a| a.starts_with("--listen")),
        "the default port is the watchdog's own default"
    );
    cfg.port = 19102;
    let c = watchdog_container(&cfg, SidecarMode::Native, StartGate::Probed);
    assert_eq!(
        c.args.unwrap().last().map(String::as_str),
        Some("--listen=0.0.0.0:19102")
    );
    let port = c.ports.unwrap().remove(0);
    assert_eq!(port.container_port, 19102);
    assert_eq!(port.name.as_deref(), Some(PORT_NAME));
    let probe_port = c.startup_probe.unwrap().http_get.unwrap().port;
    assert_eq!(probe_port, IntOrString::String(PORT_NAME.to_owned()));
}

#[test]
fn the_typed_patch_writes_the_bytes_of_its_value_tree() {
    // The answer's bytes stay those of a patch built as a
    // `serde_json::Value` (sorted keys): every field the watchdog's
    // container and volume set, in both modes, pod shapes and settings.
    let pod = |extra: serde_json::Value| -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": "l", "labels": {names::LISTENER_COMPONENT_LABEL: names::LISTENER_COMPONENT_VALUE},
                "ownerReferences": [{"apiVersion": names::AUTOSCALING_LISTENER_API_VERSION,
                    "kind": names::AUTOSCALING_LISTENER_KIND, "name": "l", "uid": "0d6f4f3e-5a8b"}]},
            "spec": {"containers": [{"name": "listener"}]},
        });
        if let (Some(o), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
            o.extend(extra.clone());
        }
        serde_json::from_value(v).unwrap()
    };
    let mut other = InjectConfig::new("img/x:1");
    other.port = 19102;
    other.thresholds.dry_run = true;
    other.thresholds.hung_after = Some(Duration::from_secs(3600));
    other.resources.cpu_limit = Some("100m".to_owned());
    for cfg in [InjectConfig::new("img"), other] {
        for mode in [SidecarMode::Native, SidecarMode::Classic] {
            for extra in [
                serde_json::json!({}),
                serde_json::json!({"initContainers": [], "volumes": []}),
            ] {
                let Mutation::Inject { patch, .. } = mutate(&pod(extra), &cfg, mode) else {
                    panic!("not injected");
                };
                let tree = serde_json::to_value(&patch).unwrap();
                assert_eq!(
                    String::from_utf8(serde_json::to_vec(&patch).unwrap()).unwrap(),
                    serde_json::to_string(&tree).unwrap()
                );
            }
        }
    }
}

#[test]
fn annotation_key_slash_is_escaped() {
    let p = pointer(&["metadata", "annotations", names::ANNOTATION_INJECTED]);
    assert_eq!(p, "/metadata/annotations/arc-watchdog.dev~1injected");
    assert_eq!(pointer(&["a~b", "c/d~1"]), "/a~0b/c~1d~01");
}

#[test]
fn host_network_and_suspended_pods_are_skipped_and_the_suspension_only_marks() {
    let listener = || -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "l", "labels": {names::LISTENER_COMPONENT_LABEL: names::LISTENER_COMPONENT_VALUE}},
            "spec": {"containers": [{"name": "listener"}]},
        }))
        .unwrap()
    };
    let cfg = InjectConfig::new("img");
    assert!(matches!(
        mutate(&listener(), &cfg, SidecarMode::Native),
        Mutation::Inject { .. }
    ));
    let mut host = listener();
    host.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(skip_reason(&host), Some(SkipReason::HostNetwork));
    assert_eq!(
        mutate(&host, &cfg, SidecarMode::Native),
        Mutation::Skip(SkipReason::HostNetwork)
    );
    let until: Timestamp = "2025-01-01T01:00:00Z".parse().unwrap();
    let Mutation::Suspended { until: got, patch } =
        mutate_for(&listener(), &cfg, SidecarMode::Native, suspended(until))
    else {
        panic!("not suspended");
    };
    assert_eq!(got, until);
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        serde_json::json!([{"op": "add", "path": "/metadata/annotations",
            "value": {names::ANNOTATION_POD_SUSPENDED: "2025-01-01T01:00:00Z"}}])
    );
    // A pod so marked needs nothing: not even the coverage report.
    let mut marked = listener();
    marked.metadata.annotations =
        Some([(names::ANNOTATION_POD_SUSPENDED.to_owned(), "x".to_owned())].into());
    assert_eq!(skip_reason(&marked), Some(SkipReason::InjectionSuspended));
    // Opted-out or not-a-listener pods stay skipped for their own reason.
    assert_eq!(
        mutate_for(&host, &cfg, SidecarMode::Native, suspended(until)),
        Mutation::Skip(SkipReason::HostNetwork)
    );
}

/// What admission knows of a listener whose injection is suspended.
fn suspended(until: Timestamp) -> ListenerFacts {
    ListenerFacts {
        suspended_until: Some(until),
        ..ListenerFacts::default()
    }
}

#[test]
fn the_start_gate_is_open_only_when_no_backoff_is_known_to_be_pending() {
    let cfg = InjectConfig::new("img");
    assert_eq!(StartGate::for_listener(&cfg, Some(false)), StartGate::Open);
    assert_eq!(StartGate::for_listener(&cfg, Some(true)), StartGate::Probed);
    assert_eq!(StartGate::for_listener(&cfg, None), StartGate::Probed);
    let mut dry = cfg.clone();
    dry.thresholds.dry_run = true;
    for pending in [None, Some(true), Some(false)] {
        assert_eq!(
            StartGate::for_listener(&dry, pending),
            StartGate::Open,
            "{pending:?}"
        );
    }
    // An open gate is a native sidecar without the probe; classic has none.
    let open = watchdog_container(&cfg, SidecarMode::Native, StartGate::Open);
    assert_eq!(open.restart_policy.as_deref(), Some("Always"));
    assert!(open.startup_probe.is_none());
    let mut probed = watchdog_container(&cfg, SidecarMode::Native, StartGate::Probed);
    assert!(probed.startup_probe.take().is_some());
    assert_eq!(probed, open);
    assert!(
        watchdog_container(&cfg, SidecarMode::Classic, StartGate::Probed)
            .startup_probe
            .is_none()
    );
}
