//! The streaming splitter: arbitrary byte chunks in, one [`Entry`] per line out.

use std::borrow::Cow;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::scan::{self, ErrScan, Head};
use super::time::{line_time, split_prefix};
use super::{ListenerEvent, LogFormat, strip_cr};

/// Bytes of one line kept in memory by default; longer lines are truncated
/// in [`Entry::content`] but classified over their whole length.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// Smallest accepted `max_line`: every prefix the classifier needs fits.
const MIN_MAX_LINE: usize = 1024;

/// Identity of a log line for deduplication after a reconnect: the
/// `kubectl --timestamps` time and a stable hash of the content. Stable
/// across processes and versions (FNV-1a), so it can be stored in the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryKey {
    /// The line's `kubectl logs --timestamps` time.
    pub at: Timestamp,
    /// FNV-1a 64 of the (possibly truncated) content and its full length.
    pub hash: u64,
}

impl EntryKey {
    /// Whether this line is seen for the first time, given the newest line
    /// time seen so far (`high_water`) and the hashes of the lines seen at
    /// exactly that time (`seen`, at most `max_seen` kept); records it if
    /// so. A line older than the high-water mark was seen (log streams are
    /// in time order; a resumed one starts again at a timestamp seen).
    pub fn first_sighting(
        self,
        high_water: &mut Option<Timestamp>,
        seen: &mut Vec<u64>,
        max_seen: usize,
    ) -> bool {
        match *high_water {
            Some(hw) if self.at < hw => false,
            Some(hw) if self.at == hw => {
                if seen.contains(&self.hash) {
                    return false;
                }
                seen.push(self.hash);
                if seen.len() > max_seen {
                    seen.remove(0);
                }
                true
            }
            _ => {
                *high_water = Some(self.at);
                seen.clear();
                seen.push(self.hash);
                true
            }
        }
    }
}

/// One physical line of listener output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The `kubectl logs --timestamps` prefix, parsed; `None` without one.
    pub stamp: Option<Timestamp>,
    /// The line without prefixes and line ending, cut to the line's first
    /// `max_line` raw bytes (see [`Entry::truncated`]). May hold any bytes.
    pub content: &'a [u8],
    /// Length of the whole content in bytes (more than `content.len()` when
    /// truncated).
    pub len: usize,
    /// What the line means, classified over its whole length.
    pub event: ListenerEvent,
    /// The line does not start an entry in any known format: it continues
    /// the entry above (a Go stack trace line, a wrapped message). Such lines
    /// are always [`ListenerEvent::Other`].
    pub continuation: bool,
    /// 1-based physical line number within this parser's stream.
    pub line_no: u64,
}

impl Entry<'_> {
    /// Whether [`Entry::content`] was cut to the parser's `max_line`.
    pub fn truncated(&self) -> bool {
        self.len > self.content.len()
    }

    /// Dedupe key (needs the kubectl timestamp).
    pub fn key(&self) -> Option<EntryKey> {
        self.stamp.map(|at| EntryKey {
            at,
            hash: fnv1a(self.content, self.len),
        })
    }

    /// The time written inside the line itself (see [`line_time`]).
    pub fn line_time(&self) -> Option<Timestamp> {
        line_time(self.content)
    }

    /// The kubectl timestamp if any, else the line's own time.
    pub fn time(&self) -> Option<Timestamp> {
        self.stamp.or_else(|| self.line_time())
    }

    /// The format of the line.
    pub fn format(&self) -> LogFormat {
        scan::detect_format(self.content)
    }

    /// The content as text, invalid UTF-8 replaced.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.content)
    }

    /// An owned copy (the content is at most `max_line` bytes).
    pub fn to_owned_entry(&self) -> OwnedEntry {
        OwnedEntry {
            stamp: self.stamp,
            content: self.content.to_vec(),
            len: self.len,
            event: self.event,
            continuation: self.continuation,
            line_no: self.line_no,
        }
    }
}

/// An owned [`Entry`], for keeping lines beyond the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEntry {
    /// See [`Entry::stamp`].
    pub stamp: Option<Timestamp>,
    /// See [`Entry::content`].
    pub content: Vec<u8>,
    /// See [`Entry::len`].
    pub len: usize,
    /// See [`Entry::event`].
    pub event: ListenerEvent,
    /// See [`Entry::continuation`].
    pub continuation: bool,
    /// See [`Entry::line_no`].
    pub line_no: u64,
}

impl OwnedEntry {
    /// Borrows it back as an [`Entry`].
    pub fn as_entry(&self) -> Entry<'_> {
        Entry {
            stamp: self.stamp,
            content: &self.content,
            len: self.len,
            event: self.event,
            continuation: self.continuation,
            line_no: self.line_no,
        }
    }
}

fn fnv1a(bytes: &[u8], len: usize) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    for b in (len as u64).to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// State of a line longer than `max_line`: the head is kept in the buffer,
/// the rest streams through the marker scan.
#[derive(Debug, Clone)]
struct Overflow {
    /// Raw bytes of the line so far (prefix included).
    total: usize,
    last_byte: u8,
    state: OverflowState,
}

#[derive(Debug, Clone)]
enum OverflowState {
    Decided(ListenerEvent),
    Fatal(ErrScan),
    Retry(ErrScan),
}

impl Overflow {
    fn start(head_raw: &[u8]) -> Self {
        let (_, content) = split_prefix(head_raw);
        let state = match scan::head(content) {
            Head::Decided(ev) => OverflowState::Decided(ev),
            Head::Fatal(off) => {
                let mut s = ErrScan::default();
                s.feed(&content[off..]);
                OverflowState::Fatal(s)
            }
            Head::LegacyRetry => {
                let mut s = ErrScan::default();
                s.feed(content);
                OverflowState::Retry(s)
            }
        };
        Self {
            total: head_raw.len(),
            last_byte: head_raw.last().copied().unwrap_or(0),
            state,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else { return };
        self.total += bytes.len();
        self.last_byte = last;
        match &mut self.state {
            OverflowState::Decided(_) => {}
            OverflowState::Fatal(s) | OverflowState::Retry(s) => s.feed(bytes),
        }
    }

    fn finish(self) -> (ListenerEvent, usize) {
        let len = self.total - usize::from(self.last_byte == b'\r');
        let ev = match self.state {
            OverflowState::Decided(ev) => ev,
            OverflowState::Fatal(mut s) => {
                s.finish();
                s.fatal_event()
            }
            OverflowState::Retry(mut s) => {
                s.finish();
                s.retry_event()
            }
        };
        (ev, len)
    }
}

/// Streaming parser over listener output in arbitrary chunks.
///
/// Splits on `\n`, strips a trailing `\r`, `kubectl logs --prefix` and
/// `--timestamps` prefixes, keeps at most `max_line` bytes of one line in
/// memory, and classifies every line (see [`super::classify`]). Accepts any
/// bytes (invalid UTF-8, NUL).
#[derive(Debug, Clone)]
pub struct Parser {
    max_line: usize,
    buf: Vec<u8>,
    overflow: Option<Overflow>,
    line_no: u64,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    /// A parser keeping at most [`DEFAULT_MAX_LINE`] bytes of a line.
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    /// A parser keeping at most `max_line` bytes (at least 1 KiB) of a line.
    pub fn with_max_line(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(MIN_MAX_LINE),
            buf: Vec::new(),
            overflow: None,
            line_no: 0,
        }
    }

    /// Parses every line of `data` (a whole file): [`Parser::push`] then
    /// [`Parser::finish`].
    pub fn parse_all(data: &[u8], mut on_entry: impl FnMut(Entry<'_>)) {
        let mut p = Parser::new();
        p.push(data, &mut on_entry);
        p.finish(&mut on_entry);
    }

    /// Feeds the next chunk; calls `on_entry` for every line it completes.
    pub fn push(&mut self, chunk: &[u8], mut on_entry: impl FnMut(Entry<'_>)) {
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..nl];
            rest = &rest[nl + 1..];
            if self.buf.is_empty() && self.overflow.is_none() {
                self.line_no += 1;
                emit_whole(piece, self.max_line, self.line_no, &mut on_entry);
            } else {
                self.append(piece);
                self.end_line(&mut on_entry);
            }
        }
        if !rest.is_empty() {
            self.append(rest);
        }
    }

    /// Ends the stream: emits a last line that had no `\n`.
    pub fn finish(&mut self, mut on_entry: impl FnMut(Entry<'_>)) {
        if !self.buf.is_empty() || self.overflow.is_some() {
            self.end_line(&mut on_entry);
        }
    }

    /// Drops a partial line (a follow stream was cut mid-line and will be
    /// resumed from the last complete line's timestamp).
    pub fn reset_partial(&mut self) {
        self.buf.clear();
        self.overflow = None;
    }

    fn append(&mut self, bytes: &[u8]) {
        if let Some(ov) = &mut self.overflow {
            ov.feed(bytes);
            return;
        }
        let room = self.max_line - self.buf.len();
        if bytes.len() <= room {
            self.buf.extend_from_slice(bytes);
            return;
        }
        self.buf.extend_from_slice(&bytes[..room]);
        let mut ov = Overflow::start(&self.buf);
        ov.feed(&bytes[room..]);
        self.overflow = Some(ov);
    }

    fn end_line(&mut self, on_entry: &mut impl FnMut(Entry<'_>)) {
        self.line_no += 1;
        match self.overflow.take() {
            Some(ov) => {
                let (event, raw_len) = ov.finish();
                let (stamp, content) = split_prefix(&self.buf);
                // The head holds no line end: nothing to strip.
                let prefix = self.buf.len() - content.len();
                on_entry(Entry {
                    stamp,
                    content,
                    len: raw_len - prefix,
                    event,
                    continuation: !scan::is_entry_start(content),
                    line_no: self.line_no,
                });
            }
            None => emit_whole(&self.buf, self.max_line, self.line_no, on_entry),
        }
        self.buf.clear();
    }
}

/// Emits a line that is complete in memory.
fn emit_whole(raw: &[u8], max_line: usize, line_no: u64, on_entry: &mut impl FnMut(Entry<'_>)) {
    let line = strip_cr(raw);
    let (stamp, content) = split_prefix(line);
    // Keep what a streamed line keeps: the first `max_line` raw bytes.
    let keep = max_line
        .saturating_sub(line.len() - content.len())
        .min(content.len());
    let continuation = !scan::is_entry_start(content);
    let event = if continuation {
        ListenerEvent::Other
    } else {
        scan::classify_content(content)
    };
    on_entry(Entry {
        stamp,
        content: &content[..keep],
        len: content.len(),
        event,
        continuation,
        line_no,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes of lines already seen are stored in the Lease and read by
    /// the next watchdog, possibly a newer version: the function must not
    /// change. FNV-1a (64 bit) over the content, then its length as 8
    /// little-endian bytes.
    #[test]
    fn line_hashes_stay_fnv1a_of_content_and_length() {
        assert_eq!(fnv1a(b"abc", 3), 0xe5f4_9faf_dcdf_1048);
        let line = b"2026-03-02T04:10:02Z Getting next message";
        assert_eq!(fnv1a(line, line.len()), 0xb88d_86fe_812a_fd74);
        assert_ne!(fnv1a(b"abc", 3), fnv1a(b"abc", 4), "the length counts");
    }
}
