//! The listener-log parser: raw listener output in, [`ListenerEvent`]s out.
//! Pure: no I/O, no clock.
//!
//! # API overview
//!
//! - [`classify`]`(line) -> `[`ListenerEvent`]: one complete log entry
//!   (with or without a `kubectl logs --timestamps` prefix and trailing CR).
//! - [`Parser`]: a streaming splitter for arbitrary byte chunks (a follow
//!   stream, a file). [`Parser::push`] calls back with one [`Entry`] per
//!   physical line; [`Parser::finish`] flushes a last line without `\n`.
//!   Memory is bounded by [`Parser::with_max_line`] (default
//!   [`DEFAULT_MAX_LINE`]); longer lines are still classified over their
//!   full length (a conflict marker at the end of a 4 MB line is found).
//! - [`Entry`]: the kubectl timestamp ([`Entry::stamp`]), the content,
//!   the event, whether it continues the entry above (stack traces), and a
//!   dedupe key ([`Entry::key`]: timestamp + content hash) so that a log
//!   stream resumed after a reconnect never counts a line twice.
//! - [`Entry::line_time`] / [`line_time`]: the time written inside the line
//!   itself (zap, slog, Go's standard `log`), used by `analyze` when there is
//!   no kubectl prefix.
//! - [`sample_log`]: a deterministic realistic multi-format log with
//!   look-alikes, shared by the benchmark and the tests.
//!
//! # Formats (see `arc-facts.md`)
//!
//! - Go standard `log` fatal line (every version, never JSON):
//!   `YYYY/MM/DD hh:mm:ss Application returned an error: <chain>`. A chain
//!   about creating the message session (`createSession failed`, `failed to
//!   create session`, `failed to create message session`) that carries
//!   `RunnerScaleSetSessionConflictException`, or a 409 status with `already
//!   has an active session` (up to 0.9.0), is a fatal
//!   [`ListenerEvent::SessionConflict`]. Any other chain is a
//!   [`ListenerEvent::Fatal`] with a [`FatalKind`].
//! - zap text (`ts<TAB>LEVEL<TAB>logger<TAB>message<TAB>{fields}`) and zap
//!   JSON (`"message"`), 0.8 to 0.13; slog text (`msg=`) and slog JSON
//!   (`"msg"`), 0.14+. Only the message field is looked at for
//!   [`ListenerEvent::SessionEstablished`] (`Getting next message`,
//!   `Current runner scale set statistics.`, `Handling initial session
//!   statistics`), so the same words inside another field never count.
//! - The legacy listener's retry line (`Unable to create message session.
//!   Will try again in 30 seconds` in 0.7, lower-case `unable` from 0.8 on)
//!   with the conflict in its error field: a non-fatal session conflict (the
//!   process retries in place, 10 times, 30 to 45 s apart). Its last entry
//!   is a zap error `Error encountered` with the chain in its `error` field
//!   (`create message session failed since it exceed 10 retry limit. ...`):
//!   read like a fatal line.
//!
//! Everything else is [`ListenerEvent::Other`]: Kubernetes
//! optimistic-concurrency 409s, job-acquisition 409s, 409s on other
//! endpoints, `RunnerScaleSetSessionExpiredException`, and the conflict
//! exception's name inside a field of an unrelated entry.

mod sample;
mod scan;
mod split;
mod time;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub use sample::{SampleStats, sample_log, sample_log_with_stats};
pub use split::{DEFAULT_MAX_LINE, Entry, EntryKey, OwnedEntry, Parser};
pub use time::{line_time, parse_kubectl_prefix};

/// Kind of a fatal start-up or run-time error, for the report: it decides
/// what will and will not help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FatalKind {
    /// 404, `RunnerScaleSetNotFoundException`: the scale set is gone; it
    /// needs re-registration, a restart never helps.
    NotFound,
    /// 401, `Unauthorized`, bad credentials, 403 without a rate limit: the
    /// token or app credentials are wrong or revoked; a restart never helps.
    Auth,
    /// 403 or 429 with a rate limit: restarting at once makes it worse.
    RateLimited,
    /// Connection refused, EOF, timeouts, DNS: usually transient.
    Network,
    /// Anything else.
    Other,
}

impl FatalKind {
    /// Stable snake_case name (JSON, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            FatalKind::NotFound => "not_found",
            FatalKind::Auth => "auth",
            FatalKind::RateLimited => "rate_limited",
            FatalKind::Network => "network",
            FatalKind::Other => "other",
        }
    }
}

/// What one log entry means to the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerEvent {
    /// Creating the message session failed because another session is
    /// alive (HTTP 409 `RunnerScaleSetSessionConflictException`).
    SessionConflict {
        /// `true` for the standard-library fatal line (the process exits
        /// now; 0.8 and later); `false` for the legacy 0.7 listener's retry
        /// line (it tries again in place in 30 s).
        fatal: bool,
    },
    /// The listener holds its session (`Getting next message`, session
    /// statistics): a loop is over.
    SessionEstablished,
    /// The process is exiting with another error.
    Fatal(FatalKind),
    /// Anything else (most lines).
    Other,
}

impl ListenerEvent {
    /// Whether the listener process exits after this entry.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ListenerEvent::SessionConflict { fatal: true } | ListenerEvent::Fatal(_)
        )
    }

    /// Whether this is a session conflict (fatal or retried).
    pub fn is_conflict(self) -> bool {
        matches!(self, ListenerEvent::SessionConflict { .. })
    }
}

/// The log format an entry is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Go's standard `log`: `YYYY/MM/DD hh:mm:ss message` (the fatal line).
    Stdlib,
    /// zap console encoder, tab-separated (0.8 to 0.13, and 0.7).
    ZapText,
    /// zap JSON encoder (`"message"` key).
    ZapJson,
    /// slog text handler (`time=... level=... msg=...`, 0.14+).
    SlogText,
    /// slog JSON handler (`"msg"` key, 0.14+).
    SlogJson,
    /// Not a known entry start: a continuation line (stack trace) or
    /// foreign output.
    Unknown,
}

impl LogFormat {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Stdlib => "stdlib",
            LogFormat::ZapText => "zap_text",
            LogFormat::ZapJson => "zap_json",
            LogFormat::SlogText => "slog_text",
            LogFormat::SlogJson => "slog_json",
            LogFormat::Unknown => "unknown",
        }
    }
}

/// Classifies one complete log entry. A `kubectl logs --timestamps` prefix
/// and a trailing `\r` are stripped first. Never panics, whatever the bytes.
pub fn classify(line: &[u8]) -> ListenerEvent {
    let line = strip_cr(line);
    let content = match time::split_kubectl_prefix(line) {
        Some((_, content)) => content,
        None => line,
    };
    scan::classify_content(content)
}

/// Detects the format of one entry's content (without kubectl prefix).
pub fn detect_format(content: &[u8]) -> LogFormat {
    scan::detect_format(content)
}

/// The content as text, invalid UTF-8 replaced.
pub fn lossy(content: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(content)
}

pub(crate) fn strip_cr(line: &[u8]) -> &[u8] {
    match line.split_last() {
        Some((b'\r', rest)) => rest,
        _ => line,
    }
}
