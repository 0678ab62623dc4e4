//! The format of a binary's own logs (`--log-format`).

/// Format of arc-watchdog's own logs on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogOutput {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}
