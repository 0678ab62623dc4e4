//! `binary-size`: stripped sizes of the three release binaries.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::Figure;
use crate::proc;

/// The shipped binaries.
const BINARIES: [&str; 3] = ["arc-watchdog", "arc-watchdog-webhook", "arc-watchdog-certs"];

/// Goal per binary, in bytes (10 MB).
const GOAL: f64 = 10e6;

/// The `binary-size` figures. The release profile already strips symbols;
/// a copy is stripped again with `strip` when it is installed, so the
/// figure never depends on the profile.
pub fn binary_sizes(bin_dir: &Path) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut figures = Vec::new();
    for name in BINARIES {
        let src = proc::binary(bin_dir, name)?;
        let copy = dir.path().join(name);
        std::fs::copy(&src, &copy).with_context(|| format!("copying {}", src.display()))?;
        match std::process::Command::new("strip").arg(&copy).status() {
            Ok(s) if s.success() => {}
            Ok(s) => bail!("strip {} failed: {s}", copy.display()),
            // No binutils: the profile's `strip = "symbols"` is all there is.
            Err(_) => {}
        }
        let size = std::fs::metadata(&copy)?.len() as f64;
        figures.push(
            Figure::new(
                format!("binary-size-{name}"),
                format!("{:.2}", size / 1e6),
                "MB",
            )
            .against(size / GOAL, "goal (10 MB)"),
        );
    }
    Ok(figures)
}
