//! Byte-level recognition of entry formats and markers.
//!
//! Most lines are decided from their first bytes and a handful of `memchr`
//! calls (the zap text message is a tab-delimited field; JSON and slog text
//! need one `memmem` search for the message key). Only the rare fatal and
//! legacy-retry lines are scanned in full for markers, by [`ErrScan`], which
//! can be fed in pieces so that a line of megabytes is never held in memory.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::time::MAX_STAMP;
use super::{FatalKind, ListenerEvent, LogFormat};

/// Messages that mean "this run holds its session".
const ESTABLISHED: [&[u8]; 4] = [
    b"Getting next message",
    b"Current runner scale set statistics.",
    b"current runner scale set statistics.",
    b"Handling initial session statistics",
];

/// Start of the legacy listener's retry message (`cmd/githubrunnerscalesetlistener`:
/// capitalised in 0.7, lower-case from 0.8 on).
const LEGACY_RETRY: [&[u8]; 2] = [
    b"Unable to create message session",
    b"unable to create message session",
];

/// The legacy listener's last message before it exits: a zap error entry
/// whose `error` field holds the chain (it does not use Go's `log`).
const LEGACY_FATAL: &[u8] = b"Error encountered";

/// What the Go standard logger writes after the date on a fatal exit.
const FATAL_PREFIX: &[u8] = b"Application returned an error:";

/// How far into a JSON entry its message key is looked for (after `time`,
/// `level` and slog's `source` object with its file path).
const JSON_KEY_WINDOW: usize = 4096;

/// Longest marker [`ErrScan`] looks for, plus the status token's context.
const SEAM: usize = 64;

const CONFLICT_EXC: u32 = 1 << 0;
const ACTIVE_SESSION: u32 = 1 << 1;
const SESSION_CTX: u32 = 1 << 2;
const NOT_FOUND_EXC: u32 = 1 << 3;
const S401: u32 = 1 << 4;
const S403: u32 = 1 << 5;
const S404: u32 = 1 << 6;
const S409: u32 = 1 << 7;
const S429: u32 = 1 << 8;
const AUTH_WORD: u32 = 1 << 9;
const RATE_WORD: u32 = 1 << 10;
const NETWORK_WORD: u32 = 1 << 11;
const EOF_WORD: u32 = 1 << 12;

/// Plain substring markers and the flag each sets.
static MARKERS: LazyLock<Vec<(Finder<'static>, u32)>> = LazyLock::new(|| {
    let table: &[(&'static [u8], u32)] = &[
        (b"RunnerScaleSetSessionConflictException", CONFLICT_EXC),
        (b"already has an active session", ACTIVE_SESSION),
        (b"createSession failed", SESSION_CTX),
        (b"failed to create session", SESSION_CTX),
        (b"failed to create message session", SESSION_CTX),
        (b"Unable to create message session", SESSION_CTX),
        (b"unable to create message session", SESSION_CTX),
        (b"create message session failed", SESSION_CTX),
        (b"RunnerScaleSetNotFoundException", NOT_FOUND_EXC),
        (b"Unauthorized", AUTH_WORD),
        (b"unauthorized", AUTH_WORD),
        (b"Bad credentials", AUTH_WORD),
        (b"bad credentials", AUTH_WORD),
        (b"rate limit", RATE_WORD),
        (b"Rate limit", RATE_WORD),
        (b"RateLimit", RATE_WORD),
        (b"rate-limit", RATE_WORD),
        (b"connection refused", NETWORK_WORD),
        (b"connection reset", NETWORK_WORD),
        (b"i/o timeout", NETWORK_WORD),
        (b"context deadline exceeded", NETWORK_WORD),
        (b"no such host", NETWORK_WORD),
        (b"TLS handshake timeout", NETWORK_WORD),
        (b"Client.Timeout exceeded", NETWORK_WORD),
        (b"network is unreachable", NETWORK_WORD),
        (b"broken pipe", NETWORK_WORD),
        (b"server misbehaving", NETWORK_WORD),
    ];
    table
        .iter()
        .map(|(needle, flag)| (Finder::new(*needle), *flag))
        .collect()
});

/// Status codes recognised as standalone tokens, and their flags.
const STATUS: [(&[u8; 3], u32); 5] = [
    (b"401", S401),
    (b"403", S403),
    (b"404", S404),
    (b"409", S409),
    (b"429", S429),
];

static STATUS_FINDERS: LazyLock<Vec<(Finder<'static>, u32)>> = LazyLock::new(|| {
    STATUS
        .iter()
        .map(|(needle, flag)| (Finder::new(needle.as_slice()), *flag))
        .collect()
});

static EOF_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"EOF"));
static JSON_MSG: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"msg\":"));
static JSON_MESSAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"message\":"));
static SLOG_MSG: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b" msg="));

/// Incremental marker scan over the error chain of a fatal line (or a
/// legacy retry line). Feed the pieces in order, then call [`ErrScan::finish`].
#[derive(Debug, Clone)]
pub(crate) struct ErrScan {
    flags: u32,
    tail: [u8; SEAM],
    tail_len: usize,
    /// Bytes fed so far: when the tail holds all of them, its start is
    /// the line's.
    fed: usize,
}

impl Default for ErrScan {
    fn default() -> Self {
        Self {
            flags: 0,
            tail: [0; SEAM],
            tail_len: 0,
            fed: 0,
        }
    }
}

impl ErrScan {
    /// Scans the next piece of the line. Markers split between two pieces
    /// are found through the seam (the previous piece's last bytes).
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.fed = self.fed.saturating_add(bytes.len());
        if self.tail_len > 0 {
            let take = bytes.len().min(SEAM);
            let mut seam = [0u8; 2 * SEAM];
            seam[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            seam[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            let n = self.tail_len + take;
            self.scan(&seam[..n], false, false);
            self.scan(bytes, false, false);
        } else {
            // Nothing came before the first piece: its start is a boundary.
            self.scan(bytes, true, false);
        }
        // Keep the last SEAM bytes of (tail ++ bytes).
        if bytes.len() >= SEAM {
            self.tail.copy_from_slice(&bytes[bytes.len() - SEAM..]);
            self.tail_len = SEAM;
        } else {
            let mut joined = [0u8; 2 * SEAM];
            joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joined[self.tail_len..self.tail_len + bytes.len()].copy_from_slice(bytes);
            let n = self.tail_len + bytes.len();
            let keep = n.min(SEAM);
            self.tail[..keep].copy_from_slice(&joined[n - keep..n]);
            self.tail_len = keep;
        }
    }

    /// Ends the line: a status token at its very end counts now.
    pub(crate) fn finish(&mut self) {
        let tail = self.tail;
        let n = self.tail_len;
        self.scan(&tail[..n], self.fed == n, true);
    }

    fn scan(&mut self, hay: &[u8], start_is_boundary: bool, end_is_boundary: bool) {
        for (finder, flag) in MARKERS.iter() {
            if self.flags & flag == 0 && finder.find(hay).is_some() {
                self.flags |= flag;
            }
        }
        for (finder, flag) in STATUS_FINDERS.iter() {
            if self.flags & flag != 0 {
                continue;
            }
            if finder
                .find_iter(hay)
                .any(|at| is_status_token(hay, at, 3, start_is_boundary, end_is_boundary))
            {
                self.flags |= flag;
            }
        }
        if self.flags & EOF_WORD == 0
            && EOF_FINDER
                .find_iter(hay)
                .any(|at| is_word(hay, at, 3, start_is_boundary, end_is_boundary))
        {
            self.flags |= EOF_WORD;
        }
    }

    fn has(&self, flags: u32) -> bool {
        self.flags & flags != 0
    }

    fn is_conflict(&self) -> bool {
        self.has(CONFLICT_EXC) || (self.has(S409) && self.has(ACTIVE_SESSION))
    }

    /// The event of a standard-library fatal line with this chain.
    pub(crate) fn fatal_event(&self) -> ListenerEvent {
        if self.has(SESSION_CTX) && self.is_conflict() {
            return ListenerEvent::SessionConflict { fatal: true };
        }
        ListenerEvent::Fatal(self.kind())
    }

    /// The event of a legacy retry line with these fields.
    pub(crate) fn retry_event(&self) -> ListenerEvent {
        if self.is_conflict() {
            ListenerEvent::SessionConflict { fatal: false }
        } else {
            ListenerEvent::Other
        }
    }

    fn kind(&self) -> FatalKind {
        if self.has(NOT_FOUND_EXC | S404) {
            FatalKind::NotFound
        } else if self.has(S401 | AUTH_WORD) {
            FatalKind::Auth
        } else if self.has(S429 | RATE_WORD) {
            FatalKind::RateLimited
        } else if self.has(S403) {
            // A 403 that is not a rate limit: the credentials lack a
            // permission, which a restart does not grant.
            FatalKind::Auth
        } else if self.has(NETWORK_WORD | EOF_WORD) {
            FatalKind::Network
        } else {
            FatalKind::Other
        }
    }
}

/// A status code standing alone: `StatusCode 409,`, `status="409 Conflict"`,
/// `: 409 - had issue`; not a digit run, a UUID group, a port or a path
/// segment (`/runnerscalesets/404/sessions`).
fn is_status_token(
    hay: &[u8],
    at: usize,
    len: usize,
    start_is_boundary: bool,
    end_is_boundary: bool,
) -> bool {
    let before_ok = match at.checked_sub(1).map(|i| hay[i]) {
        None => start_is_boundary,
        Some(b) => matches!(b, b' ' | b'"' | b'(' | b'=' | b'\t'),
    };
    let after_ok = match hay.get(at + len) {
        None => end_is_boundary,
        Some(b) => matches!(b, b' ' | b'"' | b',' | b')' | b':' | b'\\' | b'.'),
    };
    before_ok && after_ok
}

fn is_word(
    hay: &[u8],
    at: usize,
    len: usize,
    start_is_boundary: bool,
    end_is_boundary: bool,
) -> bool {
    let before_ok = at
        .checked_sub(1)
        .map(|i| !hay[i].is_ascii_alphanumeric())
        .unwrap_or(start_is_boundary);
    let after_ok = match hay.get(at + len) {
        None => end_is_boundary,
        Some(b) => !b.is_ascii_alphanumeric(),
    };
    before_ok && after_ok
}

/// What the first bytes of an entry say; fatal and retry lines need a scan
/// over the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    /// The event is known.
    Decided(ListenerEvent),
    /// A standard-library fatal line; the error chain starts at this offset.
    Fatal(usize),
    /// A legacy retry line; its fields decide.
    LegacyRetry,
}

/// Length of the Go standard logger's date prefix (`2006/01/02 15:04:05 `,
/// optionally with `.000000` microseconds), if `s` starts with one.
pub(crate) fn go_date_len(s: &[u8]) -> Option<usize> {
    if s.len() < 20 {
        return None;
    }
    let shape = s[..19].iter().enumerate().all(|(i, &b)| match i {
        4 | 7 => b == b'/',
        10 => b == b' ',
        13 | 16 => b == b':',
        _ => b.is_ascii_digit(),
    });
    if !shape {
        return None;
    }
    let mut i = 19;
    if s[i] == b'.' {
        i += 1;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
    }
    (s.get(i) == Some(&b' ')).then_some(i + 1)
}

/// Whether `s` starts like an RFC 3339 date-time (`2006-01-02T`).
pub(crate) fn is_iso_start(s: &[u8]) -> bool {
    s.len() >= 20
        && s[..11].iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            _ => b.is_ascii_digit(),
        })
}

/// Whether `s` is a zap console line: an ISO 8601 timestamp, then a tab.
fn zap_ts_end(s: &[u8]) -> Option<usize> {
    if !is_iso_start(s) {
        return None;
    }
    memchr::memchr(b'\t', &s[..s.len().min(MAX_STAMP + 1)])
}

/// Decides a zap console line (timestamp, level, logger, (caller), message,
/// JSON fields; tab-separated) from the first five fields after the
/// timestamp. A JSON field cannot hold a raw tab, so a field equal to a
/// marker is the message itself, never a value inside the fields.
fn zap_text_head(s: &[u8]) -> Option<Head> {
    let ts_end = zap_ts_end(s)?;
    let mut rest = &s[ts_end + 1..];
    for _ in 0..5 {
        let end = memchr::memchr(b'\t', rest);
        if let Some(h) = message_event(&rest[..end.unwrap_or(rest.len())]) {
            return Some(h);
        }
        match end {
            Some(e) => rest = &rest[e + 1..],
            None => break,
        }
    }
    None
}

/// The format of an entry's content.
pub(crate) fn detect_format(s: &[u8]) -> LogFormat {
    match s.first() {
        Some(b'{') => {
            if JSON_MSG.find(s).is_some() {
                LogFormat::SlogJson
            } else if JSON_MESSAGE.find(s).is_some() || s.starts_with(b"{\"level\"") {
                LogFormat::ZapJson
            } else {
                LogFormat::Unknown
            }
        }
        Some(b't') if s.starts_with(b"time=") => LogFormat::SlogText,
        _ if go_date_len(s).is_some() => LogFormat::Stdlib,
        _ if zap_ts_end(s).is_some() => LogFormat::ZapText,
        _ => LogFormat::Unknown,
    }
}

/// Whether `s` is a known entry start (anything else continues the entry
/// above, such as the lines of a Go stack trace).
pub(crate) fn is_entry_start(s: &[u8]) -> bool {
    s.first() == Some(&b'{')
        || s.starts_with(b"time=")
        || go_date_len(s).is_some()
        || is_iso_start(s)
}

fn message_event(msg: &[u8]) -> Option<Head> {
    if ESTABLISHED.contains(&msg) {
        Some(Head::Decided(ListenerEvent::SessionEstablished))
    } else if LEGACY_RETRY.iter().any(|r| msg.starts_with(r)) {
        Some(Head::LegacyRetry)
    } else if msg == LEGACY_FATAL {
        // The chain is in the entry's fields: scan all of it.
        Some(Head::Fatal(0))
    } else {
        None
    }
}

/// The value of a JSON string that starts right after `"key":` (optional
/// blanks, then a quoted string). Escapes end the comparison: none of the
/// messages we look for contains one.
fn json_string_after(s: &[u8], mut i: usize) -> Option<&[u8]> {
    while s.get(i) == Some(&b' ') {
        i += 1;
    }
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let rest = s.get(start..)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    Some(&rest[..end])
}

/// Decides an entry from its first bytes (up to the whole entry).
pub(crate) fn head(s: &[u8]) -> Head {
    match s.first() {
        Some(b) if b.is_ascii_digit() => {
            if let Some(n) = go_date_len(s) {
                let rest = &s[n..];
                if rest.starts_with(FATAL_PREFIX) {
                    return Head::Fatal(n + FATAL_PREFIX.len());
                }
                return Head::Decided(ListenerEvent::Other);
            }
            zap_text_head(s).unwrap_or(Head::Decided(ListenerEvent::Other))
        }
        Some(b'{') => {
            // The message key comes early in both encoders; the first of
            // `"msg":` (slog) and `"message":` (zap) is the message, a later
            // one is a user field.
            let window = &s[..s.len().min(JSON_KEY_WINDOW)];
            let msg = JSON_MSG.find(window).map(|i| i + 6);
            let message = JSON_MESSAGE.find(window).map(|i| i + 10);
            let at = match (msg, message) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            at.and_then(|i| json_string_after(s, i))
                .and_then(message_event)
                .unwrap_or(Head::Decided(ListenerEvent::Other))
        }
        Some(b't') if s.starts_with(b"time=") => {
            let Some(at) = SLOG_MSG.find(s) else {
                return Head::Decided(ListenerEvent::Other);
            };
            // slog quotes a value with a space in it, and every message
            // looked for has one: an unquoted message is none of them.
            let msg = s[at + 5..]
                .strip_prefix(b"\"")
                .and_then(|rest| memchr::memchr2(b'"', b'\\', rest).map(|end| &rest[..end]));
            msg.and_then(message_event)
                .unwrap_or(Head::Decided(ListenerEvent::Other))
        }
        _ => Head::Decided(ListenerEvent::Other),
    }
}

/// Classifies a complete entry's content (no kubectl prefix, no CR).
pub(crate) fn classify_content(s: &[u8]) -> ListenerEvent {
    match head(s) {
        Head::Decided(ev) => ev,
        Head::Fatal(chain) => {
            let mut scan = ErrScan::default();
            scan.feed(&s[chain..]);
            scan.finish();
            scan.fatal_event()
        }
        Head::LegacyRetry => {
            let mut scan = ErrScan::default();
            scan.feed(s);
            scan.finish();
            scan.retry_event()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_tokens_need_boundaries() {
        let mut s = ErrScan::default();
        s.feed(b"POST /runnerscalesets/404/sessions id=4404 port:404 ");
        s.finish();
        assert_eq!(s.kind(), FatalKind::Other);
        let mut s = ErrScan::default();
        s.feed(b"unexpected status code 404");
        s.finish();
        assert_eq!(s.kind(), FatalKind::NotFound);
    }

    #[test]
    fn seam_finds_split_markers() {
        let text = b"createSession failed: x RunnerScaleSetSessionConflictException y";
        for cut in 0..text.len() {
            let mut s = ErrScan::default();
            s.feed(&text[..cut]);
            s.feed(&text[cut..]);
            s.finish();
            assert_eq!(
                s.fatal_event(),
                ListenerEvent::SessionConflict { fatal: true },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn go_date_with_micros() {
        assert_eq!(go_date_len(b"2026/03/02 04:10:02 x"), Some(20));
        assert_eq!(go_date_len(b"2026/03/02 04:10:02.123456 x"), Some(27));
        assert_eq!(go_date_len(b"2026-03-02 04:10:02 x"), None);
    }

    #[test]
    fn a_zap_console_line_needs_the_tab_after_its_timestamp() {
        let ts = "2026-03-02T04:10:02.123Z";
        let zap = format!("{ts}\tINFO\tlistener\tGetting next message");
        assert_eq!(zap_ts_end(zap.as_bytes()), Some(ts.len()));
        assert_eq!(detect_format(zap.as_bytes()), LogFormat::ZapText);
        // The same timestamp without the tab, or a number, is no zap line.
        let spaced = format!("{ts} INFO listener Getting next message");
        assert_eq!(zap_ts_end(spaced.as_bytes()), None);
        assert_eq!(detect_format(spaced.as_bytes()), LogFormat::Unknown);
        assert_eq!(
            detect_format(b"12345\tnot a date at all, but long"),
            LogFormat::Unknown
        );
        // The message is looked for in the fields after the timestamp.
        let late = format!("{ts}\tINFO\tlistener\tmain.go:1\tx\tGetting next message");
        assert!(zap_text_head(late.as_bytes()).is_some());
    }

    #[test]
    fn a_zap_json_line_is_known_by_its_message_key_or_its_leading_level() {
        assert_eq!(
            detect_format(br#"{"ts":1772424602.1,"level":"info","message":"x"}"#),
            LogFormat::ZapJson
        );
        assert_eq!(
            detect_format(br#"{"level":"info","ts":1772424602.1,"text":"x"}"#),
            LogFormat::ZapJson
        );
        assert_eq!(
            detect_format(br#"{"ts":1772424602.1,"text":"x"}"#),
            LogFormat::Unknown
        );
    }

    #[test]
    fn only_time_equals_starts_a_slog_text_line() {
        assert_eq!(
            detect_format(b"time=2026-09-14T22:01:00.118Z level=INFO msg=x"),
            LogFormat::SlogText
        );
        assert_eq!(detect_format(b"tomorrow never comes"), LogFormat::Unknown);
        // Nor is a message in slog's shape read from another line.
        let slog = br#"time=2026-09-14T22:01:00.118Z level=INFO msg="Getting next message""#;
        assert_eq!(classify_content(slog), ListenerEvent::SessionEstablished);
        let other = br#"tomorrow level=INFO msg="Getting next message""#;
        assert_eq!(classify_content(other), ListenerEvent::Other);
    }
    fn chain_kind(chain: &[u8]) -> FatalKind {
        let mut s = ErrScan::default();
        s.feed(chain);
        s.finish();
        s.kind()
    }

    #[test]
    fn a_status_code_or_a_word_alone_names_the_kind() {
        // Each flag on its own, without the other marker of its kind.
        assert_eq!(
            chain_kind(b"request failed(status=\"429 Too Many Requests\")"),
            FatalKind::RateLimited
        );
        assert_eq!(
            chain_kind(b"GET https://api.github.com/x: Bad credentials"),
            FatalKind::Auth
        );
        assert_eq!(
            chain_kind(b"unexpected status code 401 Unauthorized"),
            FatalKind::Auth
        );
        assert_eq!(
            chain_kind(b"POST x: rate limit exceeded"),
            FatalKind::RateLimited
        );
    }

    #[test]
    fn a_401_alone_is_an_auth_failure() {
        assert_eq!(chain_kind(b"unexpected status code 401"), FatalKind::Auth);
    }

    #[test]
    fn the_exception_alone_names_a_missing_scale_set() {
        assert_eq!(
            chain_kind(b"GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException"),
            FatalKind::NotFound
        );
    }

    #[test]
    fn the_first_pieces_start_is_a_boundary_and_a_later_ones_is_not() {
        assert_eq!(chain_kind(b"404 Not Found"), FatalKind::NotFound);
        let mut long = b"404 ".to_vec();
        long.extend([b'z'; SEAM]);
        assert_eq!(
            chain_kind(&long),
            FatalKind::NotFound,
            "beyond the tail kept"
        );
        let mut s = ErrScan::default();
        s.feed(b"id=7");
        s.feed(b"404 Not Found");
        s.finish();
        assert_eq!(s.kind(), FatalKind::Other, "7404 is no status code");
    }

    #[test]
    fn a_token_cut_at_the_seam_is_not_made_whole() {
        // The tail kept for the end starts inside "7404": not a status code.
        let mut line = b"7404 ".to_vec();
        line.extend([b'z'; 60]);
        assert_eq!(line.len(), SEAM + 1);
        assert_eq!(chain_kind(&line), FatalKind::Other);
        assert_eq!(chain_kind(&line[1..]), FatalKind::NotFound);
    }

    #[test]
    fn eof_counts_only_as_a_word() {
        for word in [&b"unexpected EOF"[..], b"EOF", b"read: EOF.", b"x (EOF) y"] {
            assert_eq!(
                chain_kind(word),
                FatalKind::Network,
                "{}",
                String::from_utf8_lossy(word)
            );
        }
        // The letters after EOF are looked for right after it, wherever
        // the word sits in the line.
        for part in [&b"ab EOFs x y"[..], b"xEOF", b"EOF2 z", b"no EOFERROR"] {
            assert_eq!(
                chain_kind(part),
                FatalKind::Other,
                "{}",
                String::from_utf8_lossy(part)
            );
        }
    }

    #[test]
    fn a_go_date_with_nothing_after_it_is_one() {
        assert_eq!(go_date_len(b"2026/03/02 04:10:02 "), Some(20));
        assert_eq!(go_date_len(b"2026/03/02 04:10:02"), None);
        // Microseconds up to the end of the input, no space after them.
        assert_eq!(go_date_len(b"2026/03/02 04:10:02.123"), None);
    }

    #[test]
    fn an_unquoted_slog_message_is_none_of_the_markers() {
        assert_eq!(
            head(b"time=2026-09-14T22:01:00Z level=INFO msg=\"Getting next message\""),
            Head::Decided(ListenerEvent::SessionEstablished)
        );
        assert_eq!(
            head(b"time=2026-09-14T22:01:00Z level=INFO msg=Getting next message"),
            Head::Decided(ListenerEvent::Other)
        );
    }
}
