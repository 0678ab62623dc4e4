//! `--sidecar-mode auto`: native sidecars only where the API server has them
//! on by default.
//!
//! Native sidecars (init containers with `restartPolicy: Always`) are beta
//! and on by default from Kubernetes 1.29. An older API server silently
//! drops `restartPolicy` from init containers, and the watchdog would then
//! be an ordinary init container that never exits: the listener would never
//! start. So: native only for a server that says it is 1.29 or newer,
//! classic whenever the version is unknown or unparsable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::version::Info;

use crate::mutation::SidecarMode;

/// First Kubernetes minor version (of major 1) with native sidecars on by default.
pub const NATIVE_SIDECARS_SINCE_MINOR: u32 = 29;

/// What `--sidecar-mode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarModeFlag {
    /// Native where the API server is 1.29 or newer, classic otherwise.
    Auto,
    /// Always native (init container with `restartPolicy: Always`).
    Native,
    /// Always classic (a regular container).
    Classic,
}

fn leading_number(s: &str) -> Option<u32> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Major and minor version from `/version`. Managed clusters report minors
/// such as `29+`; when `major`/`minor` are empty, `gitVersion`
/// (`v1.29.3-eks-...`) is used.
pub fn parse_version(info: &Info) -> Option<(u32, u32)> {
    if let (Some(major), Some(minor)) = (leading_number(&info.major), leading_number(&info.minor)) {
        return Some((major, minor));
    }
    let git = info.git_version.trim().strip_prefix('v')?;
    let mut parts = git.splitn(3, '.');
    let major = leading_number(parts.next()?)?;
    let minor = leading_number(parts.next()?)?;
    Some((major, minor))
}

/// The mode `auto` uses for a server that reported `info` (`None`: the
/// server could not be asked).
pub fn mode_for_version(info: Option<&Info>) -> SidecarMode {
    match info.and_then(parse_version) {
        Some((major, minor))
            if major > 1 || (major == 1 && minor >= NATIVE_SIDECARS_SINCE_MINOR) =>
        {
            SidecarMode::Native
        }
        _ => SidecarMode::Classic,
    }
}

/// The mode in force, shared between the refresher and the request handlers.
#[derive(Debug)]
pub struct ModeCell(AtomicU8);

impl ModeCell {
    /// A cell holding `mode`.
    pub fn new(mode: SidecarMode) -> Self {
        Self(AtomicU8::new(Self::encode(mode)))
    }

    fn encode(mode: SidecarMode) -> u8 {
        match mode {
            SidecarMode::Native => 1,
            SidecarMode::Classic => 0,
        }
    }

    /// The mode to use now.
    pub fn get(&self) -> SidecarMode {
        if self.0.load(Ordering::Relaxed) == 1 {
            SidecarMode::Native
        } else {
            SidecarMode::Classic
        }
    }

    /// Sets the mode; returns the previous one.
    pub fn set(&self, mode: SidecarMode) -> SidecarMode {
        if self.0.swap(Self::encode(mode), Ordering::Relaxed) == 1 {
            SidecarMode::Native
        } else {
            SidecarMode::Classic
        }
    }
}

/// How often `auto` asks the API server again after a success (an upgrade
/// of the control plane switches the mode without a webhook restart).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// How soon `auto` asks again after a failure.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Asks the API server for its version once and updates `cell`. Returns the
/// delay until the next check.
pub async fn refresh_once(client: &kube::Client, cell: &ModeCell) -> Duration {
    match client.apiserver_version().await {
        Ok(info) => {
            let mode = mode_for_version(Some(&info));
            let previous = cell.set(mode);
            if previous != mode {
                tracing::info!(
                    git_version = %info.git_version,
                    mode = mode.as_str(),
                    "sidecar mode chosen from the API server's version"
                );
            }
            REFRESH_INTERVAL
        }
        Err(err) => {
            // Never known: the cell still holds classic, the safe choice
            // (see the module doc). Known before: a failed request does not
            // change the server's version, so the last answer stands.
            tracing::warn!(
                error = %err,
                mode = cell.get().as_str(),
                "could not read the API server's version; keeping the current sidecar mode"
            );
            RETRY_INTERVAL
        }
    }
}

/// Keeps `cell` in line with the API server's version until cancelled.
pub async fn refresh_loop(client: kube::Client, cell: Arc<ModeCell>) {
    loop {
        let delay = refresh_once(&client, &cell).await;
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str, git: &str) -> Info {
        Info {
            major: major.to_owned(),
            minor: minor.to_owned(),
            git_version: git.to_owned(),
            ..Info::default()
        }
    }

    #[test]
    fn native_from_1_29() {
        let cases = [
            (info("1", "28", "v1.28.9"), SidecarMode::Classic),
            (info("1", "29", "v1.29.0"), SidecarMode::Native),
            (info("1", "34", "v1.34.1"), SidecarMode::Native),
            (
                info("1", "27+", "v1.27.16-eks-2f46c53"),
                SidecarMode::Classic,
            ),
            (info("1", "30+", "v1.30.2-gke.1"), SidecarMode::Native),
            (info("", "", "v1.29.3-eks-1"), SidecarMode::Native),
            (info("", "", "v1.28.3"), SidecarMode::Classic),
            (info("2", "0", "v2.0.0"), SidecarMode::Native),
            (
                info("0", "0", "v0.0.0-master+$Format:%H$"),
                SidecarMode::Classic,
            ),
        ];
        for (i, want) in cases {
            assert_eq!(mode_for_version(Some(&i)), want, "{i:?}");
        }
    }

    #[test]
    fn unknown_is_classic() {
        assert_eq!(mode_for_version(None), SidecarMode::Classic);
        assert_eq!(
            mode_for_version(Some(&info("", "", ""))),
            SidecarMode::Classic
        );
        assert_eq!(
            mode_for_version(Some(&info("x", "y", "garbage"))),
            SidecarMode::Classic
        );
        assert_eq!(parse_version(&info("", "", "v1")), None);
    }

    #[test]
    fn cell_round_trips() {
        let cell = ModeCell::new(SidecarMode::Classic);
        assert_eq!(cell.set(SidecarMode::Native), SidecarMode::Classic);
        assert_eq!(cell.get(), SidecarMode::Native);
    }
}
