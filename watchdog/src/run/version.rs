//! Known gaps of ARC versions, from the pod's `app.kubernetes.io/version`
//! label or the listener image's tag (pure).

/// A known gap of the listener's ARC version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionGap {
    /// 0.8.0 and 0.8.1: the listener does not delete its session on exit,
    /// so every restart leaves a stale session behind.
    NoSessionDeleteOnExit,
    /// 0.9.2 and older: the controller only replaces a `Failed` pod, so a
    /// dead listener next to a running (classic) sidecar is never noticed.
    DeadListenerNotNoticed,
}

impl VersionGap {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionGap::NoSessionDeleteOnExit => "no_session_delete_on_exit",
            VersionGap::DeadListenerNotNoticed => "dead_listener_not_noticed",
        }
    }

    /// Sentence for the Event and the log.
    pub fn explain(self) -> &'static str {
        match self {
            VersionGap::NoSessionDeleteOnExit => {
                "ARC 0.8.0/0.8.1 listeners do not delete their message session on exit: every restart leaves a stale session (upgrade to 0.8.2 or later)"
            }
            VersionGap::DeadListenerNotNoticed => {
                "ARC 0.9.2 and older only replace a Failed listener pod: a dead listener next to a running sidecar is not noticed by ARC (the watchdog evicts it; upgrade to 0.9.3 or later)"
            }
        }
    }
}

/// Parses `0.9.2`, `v0.9.2`, `gha-runner-scale-set-0.9.2`, `0.9.2-rc1`.
pub fn parse_version(s: &str) -> Option<(u64, u64, u64)> {
    let s = s.trim();
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let mut parts = s[start..].splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch_str = parts.next()?;
    let end = patch_str
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(patch_str.len());
    let patch = patch_str[..end].parse().ok()?;
    Some((major, minor, patch))
}

/// The tag of an image reference (`repo:tag` or `repo:tag@sha256:...`).
pub fn image_tag(image: &str) -> Option<&str> {
    let image = image.split('@').next()?;
    let last = image.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag)
}

/// The ARC version of the pod: the version label, else the image tag.
pub fn arc_version(label: Option<&str>, image: Option<&str>) -> Option<String> {
    label
        .filter(|l| parse_version(l).is_some())
        .map(str::to_owned)
        .or_else(|| {
            image
                .and_then(image_tag)
                .filter(|t| parse_version(t).is_some())
                .map(str::to_owned)
        })
}

/// Known gaps of `version`.
pub fn gaps(version: &str) -> Vec<VersionGap> {
    let Some(v) = parse_version(version) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if v.0 == 0 && v.1 == 8 && v.2 <= 1 {
        out.push(VersionGap::NoSessionDeleteOnExit);
    }
    if v <= (0, 9, 2) {
        out.push(VersionGap::DeadListenerNotNoticed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_gaps() {
        assert_eq!(parse_version("v0.9.2"), Some((0, 9, 2)));
        assert_eq!(parse_version("0.14.2-rc.1"), Some((0, 14, 2)));
        assert_eq!(parse_version("latest"), None);
        assert_eq!(
            image_tag("ghcr.io/actions/gha-runner-scale-set-controller:0.8.1@sha256:ab"),
            Some("0.8.1")
        );
        assert_eq!(image_tag("localhost:5000/ctrl"), None);
        assert_eq!(
            gaps("0.8.1"),
            vec![
                VersionGap::NoSessionDeleteOnExit,
                VersionGap::DeadListenerNotNoticed
            ]
        );
        assert_eq!(gaps("0.9.2"), vec![VersionGap::DeadListenerNotNoticed]);
        assert!(gaps("0.9.3").is_empty());
        assert!(gaps("0.14.2").is_empty());
        assert_eq!(
            arc_version(Some("latest"), Some("x/ctrl:0.9.0")).as_deref(),
            Some("0.9.0")
        );
    }
}
