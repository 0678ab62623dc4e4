//! Golden files for the mutation: every review under `golden/inputs/` is
//! run through the review handler in native and classic mode; the answer
//! (with the patch decoded) and the patched pod must equal the files under
//! `golden/expected/`. `UPDATE_GOLDEN=1 cargo test -p arc-watchdog-webhook
//! --test golden` rewrites them; review the diff before committing.
//!
//! Besides the comparison, every patch is applied with json-patch and the
//! result must be a valid Pod that keeps everything the pod had.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arc_watchdog_webhook::mutation::{self, InjectConfig, Mutation, SidecarMode, SkipReason};
use arc_watchdog_webhook::review::{self, Outcome};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

const IMAGE: &str = "ghcr.io/example/arc-watchdog:0.1.0";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn inputs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir().join("inputs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "golden inputs missing: {files:?}");
    files
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

fn check(path: &Path, actual: &Value, mismatches: &mut Vec<String>) {
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if updating() {
        std::fs::write(path, text).unwrap();
        return;
    }
    let expected = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(err) => {
            mismatches.push(format!("{}: {err}", path.display()));
            return;
        }
    };
    let expected: Value = serde_json::from_str(&expected).unwrap();
    if &expected != actual {
        mismatches.push(format!(
            "{} differs:\n{}",
            path.display(),
            pretty_assertions::StrComparison::new(
                &serde_json::to_string_pretty(&expected).unwrap(),
                &serde_json::to_string_pretty(actual).unwrap()
            )
        ));
    }
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What a correct patch must preserve and add, whatever the golden says.
fn check_invariants(name: &str, mode: SidecarMode, before: &Value, after: &Value) {
    let ctx = format!("{name} ({mode})");
    // Valid Pod.
    let pod: Pod = serde_json::from_value(after.clone())
        .unwrap_or_else(|e| panic!("{ctx}: patched object is not a Pod: {e}"));

    // Labels untouched; annotations only gain ours.
    assert_eq!(
        before["metadata"]["labels"], after["metadata"]["labels"],
        "{ctx}"
    );
    let empty = serde_json::Map::new();
    let before_ann = before["metadata"]["annotations"]
        .as_object()
        .unwrap_or(&empty);
    let after_ann = after["metadata"]["annotations"].as_object().unwrap();
    for (k, v) in before_ann {
        assert_eq!(after_ann.get(k), Some(v), "{ctx}: annotation {k} changed");
    }
    assert_eq!(after_ann.len(), before_ann.len() + 1, "{ctx}");
    assert_eq!(
        after_ann["arc-watchdog.dev/injected"],
        mode.as_str(),
        "{ctx}"
    );

    // Every existing container and init container unchanged, in order.
    let spec_b = &before["spec"];
    let spec_a = &after["spec"];
    let mut containers_a: Vec<Value> = spec_a["containers"].as_array().unwrap().clone();
    let mut inits_a: Vec<Value> = spec_a["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match mode {
        SidecarMode::Native => {
            assert_eq!(inits_a[0]["name"], "arc-watchdog", "{ctx}");
            assert_eq!(inits_a[0]["restartPolicy"], "Always", "{ctx}");
            assert!(inits_a[0]["startupProbe"].is_object(), "{ctx}");
            inits_a.remove(0);
        }
        SidecarMode::Classic => {
            let last = containers_a.pop().unwrap();
            assert_eq!(last["name"], "arc-watchdog", "{ctx}");
            assert!(last.get("restartPolicy").is_none(), "{ctx}");
            assert!(last.get("startupProbe").is_none(), "{ctx}");
            assert_eq!(
                containers_a[0]["name"], spec_b["containers"][0]["name"],
                "{ctx}"
            );
        }
    }
    assert_eq!(&Value::Array(containers_a), &spec_b["containers"], "{ctx}");
    let inits_b = spec_b["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(inits_a, inits_b, "{ctx}");
    // Other pod-level fields untouched.
    for field in [
        "restartPolicy",
        "serviceAccountName",
        "nodeSelector",
        "terminationGracePeriodSeconds",
    ] {
        assert_eq!(spec_a.get(field), spec_b.get(field), "{ctx}: {field}");
    }

    // Unique names; our token volume present and mounted once.
    let all: Vec<String> = names(spec_a.get("initContainers"))
        .into_iter()
        .chain(names(spec_a.get("containers")))
        .collect();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "{ctx}: duplicate container names {all:?}"
    );
    let volumes = names(spec_a.get("volumes"));
    let unique: BTreeSet<&String> = volumes.iter().collect();
    assert_eq!(
        unique.len(),
        volumes.len(),
        "{ctx}: duplicate volumes {volumes:?}"
    );
    assert!(volumes.contains(&"arc-watchdog-token".to_owned()), "{ctx}");
    let before_volumes = names(spec_b.get("volumes"));
    assert_eq!(volumes[..before_volumes.len()], before_volumes[..], "{ctx}");

    // Idempotent: the patched pod gets no second patch.
    assert_eq!(
        mutation::mutate(&pod, &InjectConfig::new(IMAGE), mode),
        Mutation::Skip(SkipReason::AlreadyInjected),
        "{ctx}"
    );
}

#[test]
fn golden_reviews() {
    let cfg = InjectConfig::new(IMAGE);
    let mut mismatches = Vec::new();
    let mut injected = 0;
    for input in inputs() {
        let name = input.file_stem().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&input).unwrap();
        let review_in: Value = serde_json::from_slice(&body).unwrap();
        for mode in [SidecarMode::Native, SidecarMode::Classic] {
            let result = review::handle(&body, &cfg, mode);
            assert_eq!(result.status, 200, "{name}");
            let mut answer: Value = serde_json::from_slice(&result.body).unwrap();
            assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{name}");
            assert_eq!(
                answer["response"]["uid"], review_in["request"]["uid"],
                "{name}"
            );
            assert_eq!(answer["response"]["allowed"], true, "{name}: never denies");
            let patch = answer["response"]
                .as_object_mut()
                .unwrap()
                .remove("patch")
                .map(|encoded| serde_json::from_slice::<Value>(&patch_bytes(&encoded)).unwrap());
            if let Some(patch) = &patch {
                answer["response"]["patch (decoded)"] = patch.clone();
            }
            let summary = json!({
                "status": result.status,
                "outcome": result.outcome.outcome(),
                "reason": result.outcome.reason(),
                "answer": answer,
            });
            let stem = format!("{name}.{}", mode.as_str());
            check(
                &golden_dir().join("expected").join(format!("{stem}.json")),
                &summary,
                &mut mismatches,
            );
            let pod_file = golden_dir()
                .join("expected")
                .join(format!("{stem}.pod.json"));
            match patch {
                Some(patch) => {
                    assert!(
                        matches!(result.outcome, Outcome::Injected(m) if m == mode),
                        "{name}"
                    );
                    let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
                    let before = review_in["request"]["object"].clone();
                    let mut after = before.clone();
                    json_patch::patch(&mut after, &patch)
                        .unwrap_or_else(|e| panic!("{stem}: patch does not apply: {e}"));
                    check_invariants(&name, mode, &before, &after);
                    check(&pod_file, &after, &mut mismatches);
                    injected += 1;
                }
                None => {
                    assert!(!matches!(result.outcome, Outcome::Injected(_)), "{name}");
                    if !updating() && pod_file.exists() {
                        mismatches.push(format!("{} should not exist", pod_file.display()));
                    }
                }
            }
        }
    }
    assert!(
        injected >= 16,
        "only {injected} injections among the goldens"
    );
    assert!(
        mismatches.is_empty(),
        "{} golden mismatches (UPDATE_GOLDEN=1 regenerates):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// The response's `patch` as bytes. The API defines `[]byte` in JSON as
/// a standard base64 string; anything else (such as a JSON array of
/// numbers) fails the test.
fn patch_bytes(encoded: &Value) -> Vec<u8> {
    let Value::String(s) = encoded else {
        panic!("patch is not a base64 string: {encoded}");
    };
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("patch is not standard base64 ({e}): {s}"))
}

#[test]
fn expected_outcomes_per_input() {
    // The decisions themselves, independent of the golden files, so a
    // wrong regeneration cannot hide a behaviour change.
    let cfg = InjectConfig::new(IMAGE);
    let cases = [
        ("listener-0.14.2", "injected"),
        ("listener-0.9.3-user-sidecar", "injected"),
        ("listener-0.9.3", "injected"),
        ("listener-0.13.1-template-annotations", "injected"),
        (
            "listener-0.14.2-template-init-sidecar-integrity-hash",
            "injected",
        ),
        ("listener-0.14.2-user-native-sidecar", "injected"),
        ("listener-minimal-no-annotations-init-volumes", "injected"),
        ("listener-empty-init-and-annotations", "injected"),
        ("listener-inject-true", "injected"),
        ("listener-dry-run", "injected"),
        ("runner-pod", "not_listener"),
        ("listener-already-injected-native", "already_injected"),
        ("listener-already-injected-classic", "already_injected"),
        ("listener-opted-out", "opted_out"),
        ("listener-host-network", "host_network"),
        ("not-listener-legacy-autoscaler-container", "not_listener"),
        ("not-listener-no-component-label", "not_listener"),
        ("listener-update", "not_create"),
        ("listener-delete", "not_create"),
        ("not-pod-configmap", "not_pod"),
        ("invalid-pod-containers-not-a-list", "invalid_pod"),
    ];
    for (name, want) in cases {
        let body = std::fs::read(golden_dir().join("inputs").join(format!("{name}.json"))).unwrap();
        let result = review::handle(&body, &cfg, SidecarMode::Native);
        let got = match result.outcome {
            Outcome::Injected(_) => "injected",
            other => other.reason(),
        };
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn a_dry_run_review_is_answered_exactly_like_a_real_one() {
    // Admission has no side effects, so the webhook has no reason to tell a
    // dry run apart: the same pod gets the same answer byte for byte.
    let cfg = InjectConfig::new(IMAGE);
    let real = std::fs::read(golden_dir().join("inputs/listener-0.14.2.json")).unwrap();
    let mut review: serde_json::Value = serde_json::from_slice(&real).unwrap();
    review["request"]["dryRun"] = serde_json::Value::Bool(true);
    let dry = serde_json::to_vec(&review).unwrap();
    let a = review::handle(&real, &cfg, SidecarMode::Native);
    let b = review::handle(&dry, &cfg, SidecarMode::Native);
    assert!(matches!(a.outcome, Outcome::Injected(_)));
    assert_eq!(a.body, b.body);
}
