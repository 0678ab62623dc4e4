//! How the watchdog is added to a listener pod.

use std::fmt;
use std::str::FromStr;

/// How the watchdog is added to the pod (`--sidecar-mode`, and the value
/// of the `arc-watchdog.dev/injected` annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SidecarMode {
    /// First init container with `restartPolicy: Always` and a start gate
    /// (Kubernetes 1.29+).
    Native,
    /// A regular container appended to `containers`; no start gate.
    Classic,
}

impl SidecarMode {
    /// The flag value, the `arc-watchdog.dev/injected` annotation's value
    /// and the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Classic => "classic",
        }
    }
}

impl fmt::Display for SidecarMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SidecarMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(Self::Native),
            "classic" => Ok(Self::Classic),
            other => Err(format!(
                "unknown sidecar mode {other:?} (expected native or classic)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelling_round_trips() {
        for mode in [SidecarMode::Native, SidecarMode::Classic] {
            assert_eq!(mode.to_string().parse::<SidecarMode>(), Ok(mode));
        }
        assert_eq!(SidecarMode::Native.to_string(), "native");
        assert_eq!(SidecarMode::Classic.to_string(), "classic");
        assert!(
            "Native"
                .parse::<SidecarMode>()
                .unwrap_err()
                .contains("native or classic")
        );
    }
}
