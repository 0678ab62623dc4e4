//! The watchdog's decision thresholds.
//!
//! One definition serves three places: `arc-watchdog run` and
//! `arc-watchdog analyze` read them from flags or `ARC_WATCHDOG_*`
//! environment variables, and the webhook takes the same flags and passes
//! them on to every container it injects ([`Thresholds::to_args`]).

use std::time::Duration;

use clap::Args;

/// Parses a human duration such as `30s`, `10m` or `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Formats a duration the way [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn parse_positive_u32(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("invalid number {s:?}: {e}")),
    }
}

/// Thresholds that decide when the watchdog acts. Defaults are the
/// documented ones; every field has a flag and an environment fallback.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Thresholds {
    /// Session conflicts (or start-up crashes) within `--conflict-window`,
    /// with no established session in between, that make a loop.
    #[arg(long, env = "ARC_WATCHDOG_CONFLICT_THRESHOLD", default_value = "3", value_parser = parse_positive_u32)]
    pub conflict_threshold: u32,

    /// Window in which `--conflict-threshold` conflicts make a loop.
    #[arg(long, env = "ARC_WATCHDOG_CONFLICT_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub conflict_window: Duration,

    /// Delay of the listener's next start once a loop is detected; it stays
    /// this while the loop is younger than `--backoff-steady-for`, then
    /// doubles with every further failed start.
    #[arg(long, env = "ARC_WATCHDOG_BACKOFF_INITIAL", default_value = "30s", value_parser = parse_duration)]
    pub backoff_initial: Duration,

    /// How long a loop keeps the steady delay `--backoff-initial` before the
    /// delay starts to double. A stale session of a listener that died ends
    /// on GitHub's side within minutes (GitHub's own runner retries a
    /// conflict every 30 s for 4 minutes), and the next start should follow
    /// it closely; a conflict that outlasts this is less likely to end soon.
    #[arg(long, env = "ARC_WATCHDOG_BACKOFF_STEADY_FOR", default_value = "5m", value_parser = parse_duration)]
    pub backoff_steady_for: Duration,

    /// Longest delay of the listener's next start.
    #[arg(long, env = "ARC_WATCHDOG_BACKOFF_MAX", default_value = "10m", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// How many failed starts at the capped backoff make a conflict look
    /// permanent (the scale set registered twice, or a GitHub incident):
    /// from then on the watchdog keeps the capped delay, stops evicting and
    /// reports `DuplicateScaleSetSuspected`.
    #[arg(long, env = "ARC_WATCHDOG_DUPLICATE_AFTER_CAPS", default_value = "3", value_parser = parse_positive_u32)]
    pub duplicate_after_caps: u32,

    /// Evictions allowed per listener within `--eviction-window`.
    #[arg(long, env = "ARC_WATCHDOG_EVICTION_BUDGET", default_value = "3")]
    pub eviction_budget: u32,

    /// Window of the eviction budget.
    #[arg(long, env = "ARC_WATCHDOG_EVICTION_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub eviction_window: Duration,

    /// A run that has been up this long without failing counts as having
    /// its session, whatever it logged: a listener at log level `warn` never
    /// prints the info line that marks its session, and its loop would
    /// otherwise never end. Longer than any listener takes to fail a start
    /// (the legacy listener retries a conflict in place for up to 7.5 min).
    #[arg(long, env = "ARC_WATCHDOG_ESTABLISHED_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub established_after: Duration,

    /// Opt-in: a listener that writes nothing for this long is hung and is
    /// evicted. Off unless set.
    #[arg(long, env = "ARC_WATCHDOG_HUNG_AFTER", value_parser = parse_duration)]
    pub hung_after: Option<Duration>,

    /// Decide and report, but never evict and never delay a start.
    #[arg(long, env = "ARC_WATCHDOG_DRY_RUN", default_value_t = false)]
    pub dry_run: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            conflict_threshold: 3,
            conflict_window: Duration::from_secs(10 * 60),
            backoff_initial: Duration::from_secs(30),
            backoff_steady_for: Duration::from_secs(5 * 60),
            backoff_max: Duration::from_secs(10 * 60),
            duplicate_after_caps: 3,
            eviction_budget: 3,
            eviction_window: Duration::from_secs(60 * 60),
            established_after: Duration::from_secs(10 * 60),
            hung_after: None,
            dry_run: false,
        }
    }
}

impl Thresholds {
    /// Checks relations between fields that clap cannot check one by one.
    pub fn validate(&self) -> Result<(), String> {
        if self.backoff_initial.is_zero() {
            return Err("--backoff-initial must be greater than zero".to_owned());
        }
        if self.backoff_max < self.backoff_initial {
            return Err(format!(
                "--backoff-max ({}) must not be shorter than --backoff-initial ({})",
                format_duration(self.backoff_max),
                format_duration(self.backoff_initial)
            ));
        }
        if self.conflict_window.is_zero() {
            return Err("--conflict-window must be greater than zero".to_owned());
        }
        if self.eviction_window.is_zero() {
            return Err("--eviction-window must be greater than zero".to_owned());
        }
        if self.established_after.is_zero() {
            return Err("--established-after must be greater than zero".to_owned());
        }
        Ok(())
    }

    /// The flags that reproduce these thresholds on `arc-watchdog run`:
    /// the webhook appends them to the injected container's arguments, so
    /// the pod spec shows the values in force.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--conflict-threshold={}", self.conflict_threshold),
            format!(
                "--conflict-window={}",
                format_duration(self.conflict_window)
            ),
            format!(
                "--backoff-initial={}",
                format_duration(self.backoff_initial)
            ),
            format!(
                "--backoff-steady-for={}",
                format_duration(self.backoff_steady_for)
            ),
            format!("--backoff-max={}", format_duration(self.backoff_max)),
            format!("--duplicate-after-caps={}", self.duplicate_after_caps),
            format!("--eviction-budget={}", self.eviction_budget),
            format!(
                "--eviction-window={}",
                format_duration(self.eviction_window)
            ),
            format!(
                "--established-after={}",
                format_duration(self.established_after)
            ),
        ];
        if let Some(hung) = self.hung_after {
            args.push(format!("--hung-after={}", format_duration(hung)));
        }
        if self.dry_run {
            args.push("--dry-run".to_owned());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        thresholds: Thresholds,
    }

    #[test]
    fn defaults_match_default_impl() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.thresholds, Thresholds::default());
    }

    #[test]
    fn to_args_round_trips() {
        let t = Thresholds {
            conflict_threshold: 5,
            conflict_window: Duration::from_secs(90),
            hung_after: Some(Duration::from_secs(3600)),
            dry_run: true,
            ..Thresholds::default()
        };
        let args = std::iter::once("x".to_owned()).chain(t.to_args());
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(cli.thresholds, t);
    }

    #[test]
    fn rejects_zero_threshold_and_inverted_backoff() {
        assert!(Cli::try_parse_from(["x", "--conflict-threshold=0"]).is_err());
        let t = Thresholds {
            backoff_max: Duration::from_secs(1),
            ..Thresholds::default()
        };
        assert!(t.validate().unwrap_err().contains("--backoff-max"));
    }

    #[test]
    fn a_backoff_that_never_grows_is_valid() {
        // The maximum may equal the first backoff: every backoff is then the same.
        let t = Thresholds {
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
            ..Thresholds::default()
        };
        assert_eq!(t.validate(), Ok(()));
    }
}
