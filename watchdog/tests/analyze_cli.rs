//! `arc-watchdog analyze`, end to end: the built binary on the shared
//! samples (copied to tests/samples) and on bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn sample(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/samples")
        .join(path)
}

fn loop_0_10_1() -> Vec<PathBuf> {
    ["gen1", "gen2", "gen3"]
        .iter()
        .map(|g| sample(&format!("conflict-loop-0.10.1-text/{g}.log")))
        .collect()
}

fn pair_0_14_2() -> Vec<PathBuf> {
    ["gen1", "gen2"]
        .iter()
        .map(|g| sample(&format!("conflict-0.14.2-json/{g}.log")))
        .collect()
}

fn analyze(flags: &[&str], files: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arc-watchdog"))
        .arg("analyze")
        .args(flags)
        .args(files)
        // The thresholds' env fallbacks must not leak in from the caller.
        .env_remove("ARC_WATCHDOG_CONFLICT_THRESHOLD")
        .env_remove("ARC_WATCHDOG_CONFLICT_WINDOW")
        .env_remove("ARC_WATCHDOG_DRY_RUN")
        .output()
        .unwrap()
}

fn verdict(flags: &[&str], files: &[PathBuf]) -> Value {
    let out = analyze(flags, files);
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn actions(v: &Value) -> Vec<(String, String)> {
    v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn loop_0_10_1_three_conflicts_and_a_loop() {
    let v = verdict(&[], &loop_0_10_1());
    assert_eq!(v["conflicts"], 3);
    assert_eq!(v["loop_detected"], true);
    assert_eq!(v["crash_loop"], "session_conflict");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        assert_eq!(r["conflicts"], 1);
        assert_eq!(r["fatal"], "session_conflict");
        assert_eq!(r["established"], false);
    }
    assert_eq!(runs[2]["first"], "2026-03-02T04:10:12Z");
    // What run would have done: report each conflict, then the loop, and
    // delay the next start by 30 s from the third conflict.
    assert_eq!(
        actions(&v),
        vec![
            ("report".into(), "SessionConflict".into()),
            ("report".into(), "SessionConflict".into()),
            ("report".into(), "SessionConflict".into()),
            ("report".into(), "ConflictLoopDetected".into()),
            ("delay_start".into(), String::new()),
        ]
    );
    let delay = &v["decisions"][4];
    assert_eq!(delay["at"], "2026-03-02T04:10:14Z");
    assert_eq!(delay["until"], "2026-03-02T04:10:44Z");
    assert_eq!(delay["run"], 2);
    assert_eq!(v["start_gate_closed_until"], "2026-03-02T04:10:44Z");
}

#[test]
fn pair_0_14_2_two_conflicts_no_loop() {
    let v = verdict(&[], &pair_0_14_2());
    assert_eq!(v["conflicts"], 2);
    assert_eq!(v["loop_detected"], false);
    assert_eq!(v["crash_loop"], Value::Null);
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    assert_eq!(v["start_gate_closed_until"], Value::Null);
    // With a threshold of 2 the same pair is a loop.
    let v = verdict(&["--conflict-threshold", "2"], &pair_0_14_2());
    assert_eq!(v["loop_detected"], true);
}

#[test]
fn single_0_9_0_one_conflict() {
    let v = verdict(&[], &[sample("conflict-0.9.0-text.log")]);
    assert_eq!(v["conflicts"], 1);
    assert_eq!(v["loop_detected"], false);
    assert_eq!(v["crash_loop"], Value::Null);
}

#[test]
fn healthy_run_has_no_conflict() {
    let v = verdict(&[], &[sample("healthy-0.10.1-with-k8s-409.log")]);
    assert_eq!(v["conflicts"], 0);
    assert_eq!(v["loop_detected"], false);
    assert_eq!(v["crash_loop"], Value::Null);
    assert_eq!(v["runs"][0]["established"], true);
    assert_eq!(v["runs"][0]["lines"], 11);
    assert_eq!(v["decisions"].as_array().unwrap().len(), 0);
}

#[test]
fn a_narrow_window_splits_the_loop() {
    // The three conflicts are 6 s apart: 10 s hold only two.
    let v = verdict(&["--conflict-window", "10s"], &loop_0_10_1());
    assert_eq!(v["conflicts"], 3);
    assert_eq!(v["loop_detected"], false);
}

#[test]
fn a_healthy_run_between_conflicts_ends_the_streak() {
    let files = vec![
        loop_0_10_1()[0].clone(),
        loop_0_10_1()[1].clone(),
        sample("healthy-0.10.1-with-k8s-409.log"),
        sample("conflict-0.9.0-text.log"),
    ];
    let v = verdict(&[], &files);
    assert_eq!(v["conflicts"], 3);
    assert_eq!(v["loop_detected"], false);
}

#[test]
fn kubectl_timestamps_and_crlf_give_the_same_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, f) in loop_0_10_1().iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        let mut out = String::new();
        for (j, line) in text.lines().enumerate() {
            out.push_str(&format!(
                "2026-03-02T04:10:{:02}.{:09}Z {line}\r\n",
                i * 6 + j,
                j
            ));
        }
        let p = dir.path().join(format!("gen{i}.log"));
        std::fs::write(&p, out).unwrap();
        files.push(p);
    }
    let v = verdict(&[], &files);
    assert_eq!(v["conflicts"], 3);
    assert_eq!(v["loop_detected"], true);
}

#[test]
fn unreadable_file_fails_with_a_clear_message() {
    let missing = sample("no-such-file.log");
    let out = analyze(&[], &[loop_0_10_1()[0].clone(), missing.clone()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no verdict on a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    // A directory is not a log either.
    let out = analyze(&[], &[sample("conflict-loop-0.10.1-text")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn no_file_and_bad_flags_are_usage_errors() {
    let out = analyze(&[], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FILE"));
    let out = analyze(&["--conflict-threshold", "0"], &loop_0_10_1());
    assert!(!out.status.success());
    let out = analyze(&["--conflict-window", "soon"], &loop_0_10_1());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn binary_garbage_is_analyzed_not_crashed_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("garbage.log");
    let mut data: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    data.extend_from_slice(b"\n2026/03/02 04:10:02 Application returned an error: createSession failed: RunnerScaleSetSessionConflictException\n");
    std::fs::write(&p, data).unwrap();
    let v = verdict(&[], &[p]);
    assert_eq!(v["conflicts"], 1);
}

#[test]
fn revoked_token_is_a_crash_loop_not_a_conflict_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for i in 0..3 {
        let p = dir.path().join(format!("run{i}.log"));
        std::fs::write(
            &p,
            format!(
                "{{\"time\":\"2026-09-14T22:0{i}:00Z\",\"level\":\"INFO\",\"msg\":\"Starting listener\",\"component\":\"listener-app\"}}\n\
                 2026/09/14 22:0{i}:01 Application returned an error: failed to create actions message session client: \
                 failed to get runner registration token: request POST https://api.github.com/x failed(status=\"401 Unauthorized\"): Bad credentials\n"
            ),
        )
        .unwrap();
        files.push(p);
    }
    let v = verdict(&[], &files);
    assert_eq!(v["conflicts"], 0);
    assert_eq!(v["loop_detected"], false);
    assert_eq!(v["crash_loop"], "auth");
    assert_eq!(v["runs"][0]["fatal"], "auth");
    let crash = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "CrashLoopDetected")
        .unwrap();
    assert!(crash["message"].as_str().unwrap().contains("never heals"));
    assert!(
        v["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "delay_start")
    );
}
