//! `arc-watchdog status -A -o json` as an operator runs it, read by the
//! scenarios: the row of the e2e scale set.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use arc_watchdog_tests::control_plane;
use serde_json::Value;

use crate::SCALE_SET;

/// States that show a loop (or its consequences) while it lasts.
pub(crate) const LOOP_STATES: [&str; 5] = [
    "conflict_loop",
    "crash_loop",
    "start_delayed",
    "duplicate_suspected",
    "budget_exhausted",
];

/// The status row of [`SCALE_SET`], from `bin status -A -o json` with
/// `kubeconfig`.
pub(crate) async fn row(bin: &Path, kubeconfig: &Path) -> Result<Value> {
    let out = tokio::process::Command::new(bin)
        .args(["status", "-A", "-o", "json"])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .with_context(|| format!("running {} status", bin.display()))?;
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "status printed no JSON (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["scale_set"] == SCALE_SET)
        .cloned()
        .ok_or_else(|| anyhow!("status shows no row for {SCALE_SET}: {report}"))
}

/// Waits until the row of [`SCALE_SET`] satisfies `pred`; returns it.
pub(crate) async fn await_row(
    bin: &Path,
    kubeconfig: &Path,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let pred = &pred;
    control_plane::eventually(timeout, what, || async move {
        row(bin, kubeconfig).await.ok().filter(|r| pred(r))
    })
    .await
}

/// The row's state, for messages.
pub(crate) fn state(row: &Value) -> &str {
    row["state"].as_str().unwrap_or("?")
}
