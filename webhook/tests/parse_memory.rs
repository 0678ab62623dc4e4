//! A review whose object is not a valid Pod is judged without building the
//! body into a tree: the handler's peak memory stays about the body's own
//! size, not many times it. Its own test binary, so that the process's peak
//! resident set (`VmHWM`) belongs to this test alone.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(target_os = "linux")]

use arc_watchdog_webhook::mutation::{InjectConfig, SidecarMode};
use arc_watchdog_webhook::review::{self, ErrorReason, Outcome};

/// Peak resident set of this process, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn an_invalid_pod_of_many_small_values_is_judged_in_about_its_own_size() {
    // Two MiB of volumes that are not objects: each `0` is two bytes of
    // JSON and a 32-byte node (plus its share of the array) as a
    // `serde_json::Value`.
    let volumes = 1024 * 1024;
    let mut body = String::with_capacity(2 * volumes + 1024);
    body.push_str(
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":{"metadata":{"name":"p","labels":{"app.kubernetes.io/component":"runner-scale-set-listener"}},"spec":{"volumes":["#,
    );
    for i in 0..volumes {
        body.push_str(if i == 0 { "0" } else { ",0" });
    }
    body.push_str(r#"],"containers":[{"name":"listener"}]}}}}"#);
    let body = body.into_bytes();
    let cfg = InjectConfig::new("img");

    let before = peak_rss();
    let result = review::handle(&body, &cfg, SidecarMode::Native);
    let grown = peak_rss().saturating_sub(before);

    assert_eq!(result.status, 200);
    assert_eq!(result.outcome, Outcome::Error(ErrorReason::InvalidPod));
    let answer: serde_json::Value = serde_json::from_slice(&result.body).unwrap();
    let warning = answer["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("expected Volume"), "{warning}");
    // Built into a `serde_json::Value`, the same body raised it by about
    // sixteen times its size.
    assert!(
        grown < 2 * body.len(),
        "judging a {} byte body raised the peak by {grown} bytes",
        body.len()
    );
}
