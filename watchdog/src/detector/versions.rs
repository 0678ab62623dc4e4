//! Known gaps of ARC listener versions (see `arc-facts.md`).

use serde::Serialize;

/// A behaviour of an ARC version that the watchdog cannot fully make up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KnownGap {
    /// 0.8.0 and 0.8.1: the listener does not delete its message session on
    /// exit, so every restart (an eviction too) leaves a stale session and
    /// the next listener gets a 409 until it expires.
    NoSessionDeleteOnExit,
    /// 0.9.2 and older: the controller acts only on pod phase `Failed`; with
    /// a classic (regular container) sidecar a dead listener is never
    /// recreated by ARC (the watchdog evicts it instead).
    DeadListenerNotNoticed,
}

impl KnownGap {
    /// Stable snake_case name (metric label `warning`).
    pub fn as_str(self) -> &'static str {
        match self {
            KnownGap::NoSessionDeleteOnExit => "no_session_delete_on_exit",
            KnownGap::DeadListenerNotNoticed => "dead_listener_not_noticed",
        }
    }

    /// What it means for the user.
    pub fn describe(self) -> &'static str {
        match self {
            KnownGap::NoSessionDeleteOnExit => {
                "ARC 0.8.0/0.8.1 listeners do not delete their message session on exit: every restart \
                 leaves a stale session and the next start gets a session conflict; upgrade ARC"
            }
            KnownGap::DeadListenerNotNoticed => {
                "ARC 0.9.2 and older do not recreate a listener that died while its pod keeps running \
                 (classic sidecar): the watchdog evicts such a pod, but native sidecar mode or ARC 0.9.3+ \
                 is better"
            }
        }
    }
}

/// A warning about a listener's ARC version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionWarning {
    /// The version, normalised (`0.9.2`).
    pub version: String,
    /// Its known gaps (at least one).
    pub gaps: Vec<KnownGap>,
    /// One human sentence per gap.
    pub message: String,
}

/// Reads `major.minor.patch` from a version label (`0.9.2`, `v0.9.2`,
/// `gha-runner-scale-set-0.9.2`) or an image reference
/// (`ghcr.io/actions/gha-runner-scale-set-controller:0.9.2`, with or
/// without `@sha256:...`). Pre-release suffixes are ignored.
pub fn parse_arc_version(s: &str) -> Option<(u32, u32, u32)> {
    let s = s.trim();
    let s = s.split('@').next().unwrap_or(s);
    // An image reference: the tag follows the last ':' after the last '/'.
    let last = s.rsplit('/').next().unwrap_or(s);
    let tag = match last.rsplit_once(':') {
        Some((_, tag)) => tag,
        None => last,
    };
    let tag = tag.strip_prefix("gha-runner-scale-set-").unwrap_or(tag);
    let tag = tag.strip_prefix('v').unwrap_or(tag);
    let core = tag.split(['-', '+']).next().unwrap_or(tag);
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// The known gaps of the ARC version named by a version label or image tag;
/// `None` when there are none or the version cannot be read (`latest`, a
/// digest only, a custom build): an unknown version is not warned about.
pub fn version_warning(version_or_image: &str) -> Option<VersionWarning> {
    let v = parse_arc_version(version_or_image)?;
    let mut gaps = Vec::new();
    if v.0 == 0 && v.1 == 8 && v.2 <= 1 {
        gaps.push(KnownGap::NoSessionDeleteOnExit);
    }
    if v <= (0, 9, 2) {
        gaps.push(KnownGap::DeadListenerNotNoticed);
    }
    if gaps.is_empty() {
        return None;
    }
    let version = format!("{}.{}.{}", v.0, v.1, v.2);
    let message = gaps
        .iter()
        .map(|g| g.describe())
        .collect::<Vec<_>>()
        .join("; ");
    Some(VersionWarning {
        version,
        gaps,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_images() {
        assert_eq!(parse_arc_version("0.9.2"), Some((0, 9, 2)));
        assert_eq!(parse_arc_version("v0.14.2"), Some((0, 14, 2)));
        assert_eq!(
            parse_arc_version("gha-runner-scale-set-0.8.1"),
            Some((0, 8, 1))
        );
        assert_eq!(
            parse_arc_version("ghcr.io/actions/gha-runner-scale-set-controller:0.10.1"),
            Some((0, 10, 1))
        );
        assert_eq!(
            parse_arc_version("registry:5000/arc/controller:0.9.0-rc1@sha256:abc"),
            Some((0, 9, 0))
        );
        assert_eq!(parse_arc_version("registry:5000/arc/controller"), None);
        assert_eq!(parse_arc_version("latest"), None);
    }

    #[test]
    fn warns_on_known_gaps_only() {
        let w = version_warning("0.8.0").unwrap();
        assert_eq!(
            w.gaps,
            vec![
                KnownGap::NoSessionDeleteOnExit,
                KnownGap::DeadListenerNotNoticed
            ]
        );
        assert_eq!(
            version_warning("ghcr.io/actions/gha-runner-scale-set-controller:0.9.2")
                .unwrap()
                .gaps,
            vec![KnownGap::DeadListenerNotNoticed]
        );
        assert!(version_warning("0.9.3").is_none());
        assert!(version_warning("0.14.2").is_none());
        assert!(version_warning("1.0.0").is_none());
        assert!(version_warning("not-a-version").is_none());
    }

    #[test]
    fn gaps_have_their_stable_metric_labels() {
        assert_eq!(
            KnownGap::NoSessionDeleteOnExit.as_str(),
            "no_session_delete_on_exit"
        );
        assert_eq!(
            KnownGap::DeadListenerNotNoticed.as_str(),
            "dead_listener_not_noticed"
        );
        assert!(
            KnownGap::NoSessionDeleteOnExit.describe().starts_with(
                "ARC 0.8.0/0.8.1 listeners do not delete their message session on exit"
            )
        );
        assert!(
            KnownGap::DeadListenerNotNoticed
                .describe()
                .starts_with("ARC 0.9.2 and older do not recreate a listener that died")
        );
    }
}
