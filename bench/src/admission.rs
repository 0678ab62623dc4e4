//! `admission-vs-floor`: the ratio of the two estimates of the criterion
//! bench `webhook/benches/admission.rs`, run just before by `make bench`.

use std::path::Path;

use anyhow::Context as _;

use crate::Figure;

/// The handler's own figure and its floor, as criterion names them.
const REVIEW: &str = "admission/review";
const FLOOR: &str = "admission/floor";

/// Median time per iteration in nanoseconds from criterion's
/// `<dir>/<bench>/new/estimates.json`.
fn median_ns(criterion_dir: &Path, bench: &str) -> anyhow::Result<f64> {
    let path = criterion_dir.join(bench).join("new/estimates.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (run `cargo bench -p arc-watchdog-webhook --bench admission` first)",
            path.display()
        )
    })?;
    let estimates: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    estimates["median"]["point_estimate"]
        .as_f64()
        .filter(|ns| *ns > 0.0)
        .with_context(|| format!("{} has no positive median estimate", path.display()))
}

/// The `admission-vs-floor` figure.
pub fn vs_floor(criterion_dir: &Path) -> anyhow::Result<Vec<Figure>> {
    let review = median_ns(criterion_dir, REVIEW)?;
    let floor = median_ns(criterion_dir, FLOOR)?;
    Ok(vec![
        Figure::new(
            "admission-vs-floor",
            format!("{:.1}", review / 1000.0),
            "us",
        )
        .against(
            review / floor,
            format!("serde_json-parse+serialise ({:.1} us)", floor / 1000.0),
        ),
    ])
}
