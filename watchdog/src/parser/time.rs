//! Times: the `kubectl logs --timestamps` prefix and the time written inside
//! each format's line.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use memchr::memmem;

use super::scan::{go_date_len, is_iso_start};

/// Length of the longest RFC 3339 timestamp (`2006-01-02T15:04:05.999999999+07:00`):
/// the separator after a timestamp is looked for in this many bytes and one more.
pub(crate) const MAX_STAMP: usize = 35;

/// Splits an optional `kubectl logs --prefix` (`[pod/name/container] `) and
/// an optional `--timestamps` prefix (RFC 3339, nanoseconds, then one
/// space) off a line. Returns the parsed timestamp, if any, and the content.
pub(crate) fn split_prefix(line: &[u8]) -> (Option<Timestamp>, &[u8]) {
    let mut s = line;
    if s.starts_with(b"[pod/")
        && let Some(end) = memmem::find(&s[..s.len().min(512)], b"] ")
    {
        s = &s[end + 2..];
    }
    match split_kubectl_prefix(s) {
        Some((ts, content)) => (Some(ts), content),
        None => (None, s),
    }
}

/// Splits a `kubectl logs --timestamps` prefix off a line: an RFC 3339
/// timestamp followed by one space. zap's own timestamp is followed by a
/// tab, so a zap text line without prefix is left alone.
pub(crate) fn split_kubectl_prefix(line: &[u8]) -> Option<(Timestamp, &[u8])> {
    if !is_iso_start(line) {
        return None;
    }
    let window = &line[..line.len().min(MAX_STAMP + 1)];
    let sep = memchr::memchr2(b' ', b'\t', window)?;
    if line[sep] != b' ' {
        return None;
    }
    let ts = parse_ts(&line[..sep])?;
    Some((ts, &line[sep + 1..]))
}

/// Parses the `kubectl logs --timestamps` prefix of `line`, if it has one:
/// the timestamp and the offset where the content starts.
pub fn parse_kubectl_prefix(line: &[u8]) -> Option<(Timestamp, usize)> {
    let (ts, content) = split_kubectl_prefix(line)?;
    Some((ts, line.len() - content.len()))
}

fn parse_ts(s: &[u8]) -> Option<Timestamp> {
    let s = std::str::from_utf8(s).ok()?;
    s.parse::<Timestamp>().ok()
}

/// Go's standard logger writes local time without a zone; listener
/// containers (distroless) run in UTC, so it is read as UTC.
fn go_date(s: &[u8]) -> Option<Timestamp> {
    let n = go_date_len(s)?;
    let num = |a: usize, b: usize| -> Option<i64> {
        std::str::from_utf8(&s[a..b]).ok()?.parse::<i64>().ok()
    };
    let nanos = if s[19] == b'.' {
        let digits = &s[20..n - 1];
        let mut v: i64 = 0;
        for i in 0..9 {
            v = v * 10 + digits.get(i).map_or(0, |d| i64::from(d - b'0'));
        }
        v
    } else {
        0
    };
    let dt = DateTime::new(
        i16::try_from(num(0, 4)?).ok()?,
        i8::try_from(num(5, 7)?).ok()?,
        i8::try_from(num(8, 10)?).ok()?,
        i8::try_from(num(11, 13)?).ok()?,
        i8::try_from(num(14, 16)?).ok()?,
        i8::try_from(num(17, 19)?).ok()?,
        i32::try_from(nanos).ok()?,
    )
    .ok()?;
    dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// zap's ISO 8601 encoder may write `+0100` (no colon); RFC 3339 wants
/// `+01:00`.
fn parse_loose_ts(s: &[u8]) -> Option<Timestamp> {
    if let Some(ts) = parse_ts(s) {
        return Some(ts);
    }
    // The colon goes between the offset's hours and minutes, the last four
    // bytes; whatever else is wrong is left to `parse_ts` to reject.
    let (head, &[sign @ (b'+' | b'-'), h1, h2, m1, m2]) = s.split_last_chunk::<5>()? else {
        return None;
    };
    parse_ts(&[head, &[sign, h1, h2, b':', m1, m2]].concat())
}

fn json_value_after<'a>(s: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = memmem::find(s, key)? + key.len();
    let rest = &s[at..];
    let skip = rest.iter().take_while(|&&b| b == b' ').count();
    let rest = &rest[skip..];
    if rest.first() == Some(&b'"') {
        let v = &rest[1..];
        let end = memchr::memchr(b'"', v)?;
        Some(&v[..end])
    } else {
        let end = rest
            .iter()
            .position(|&b| matches!(b, b',' | b'}' | b' '))
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }
}

fn epoch_seconds(v: &[u8]) -> Option<Timestamp> {
    let f: f64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    // Whole nanoseconds fit an f64's precision poorly; microseconds suffice.
    let micros = (f * 1e6).round();
    if micros.abs() > 2e17 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    Timestamp::from_microsecond(micros as i64).ok()
}

/// The time written inside an entry's content (no kubectl prefix): zap's
/// `ts` (text, ISO 8601 string or epoch seconds), slog's `time`, or Go's
/// standard logger date (read as UTC). `None` for continuation lines and
/// unknown formats.
pub fn line_time(content: &[u8]) -> Option<Timestamp> {
    match content.first()? {
        b'{' => {
            let v = json_value_after(content, b"\"time\":")
                .or_else(|| json_value_after(content, b"\"ts\":"))?;
            parse_loose_ts(v).or_else(|| epoch_seconds(v))
        }
        b't' if content.starts_with(b"time=") => {
            let v = &content[5..];
            let v = v.strip_prefix(b"\"").unwrap_or(v);
            let end = v
                .iter()
                .position(|&b| matches!(b, b' ' | b'"'))
                .unwrap_or(v.len());
            parse_loose_ts(&v[..end])
        }
        // Both shapes below start with a digit; neither needs a guard.
        _ => {
            if let Some(ts) = go_date(content) {
                return Some(ts);
            }
            if !is_iso_start(content) {
                return None;
            }
            let window = &content[..content.len().min(MAX_STAMP + 1)];
            let end = memchr::memchr2(b'\t', b' ', window)?;
            parse_loose_ts(&content[..end])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn kubectl_prefix() {
        let (t, rest) = split_prefix(b"2026-03-02T04:10:02.123456789Z hello world");
        assert_eq!(t, Some(ts("2026-03-02T04:10:02.123456789Z")));
        assert_eq!(rest, b"hello world");
        // zap's timestamp is followed by a tab: not a kubectl prefix.
        let line = b"2026-03-02T04:10:00Z\tINFO\tlistener-app\tx";
        assert_eq!(split_prefix(line), (None, &line[..]));
        let (t, rest) = split_prefix(b"[pod/l-1/listener] 2026-03-02T04:10:02Z x");
        assert_eq!(t, Some(ts("2026-03-02T04:10:02Z")));
        assert_eq!(rest, b"x");
    }

    #[test]
    fn line_times_per_format() {
        assert_eq!(
            line_time(b"2026/03/02 04:10:02 Application returned an error: x"),
            Some(ts("2026-03-02T04:10:02Z"))
        );
        assert_eq!(
            line_time(b"2026/03/02 04:10:02.250000 x"),
            Some(ts("2026-03-02T04:10:02.25Z"))
        );
        assert_eq!(
            line_time(b"2026-03-02T04:10:00.5+0100\tINFO\tx"),
            Some(ts("2026-03-02T03:10:00.5Z"))
        );
        assert_eq!(
            line_time(br#"{"time":"2026-09-14T22:01:00.118Z","level":"INFO"}"#),
            Some(ts("2026-09-14T22:01:00.118Z"))
        );
        assert_eq!(
            line_time(br#"{"level":"info","ts":1772424600.5,"msg":"x"}"#),
            Some(ts("2026-03-02T04:10:00.5Z"))
        );
        assert_eq!(
            line_time(b"time=2026-09-14T22:01:00.118Z level=INFO msg=x"),
            Some(ts("2026-09-14T22:01:00.118Z"))
        );
        assert_eq!(line_time(b"\tgoroutine 1 [running]:"), None);
        // A line of no known format has no time, even with a stamp in it.
        assert_eq!(line_time(b"tick 2026-09-14T22:01:00Z x"), None);
    }

    #[test]
    fn epoch_seconds_are_read_up_to_2e11() {
        // 2e11 s (about the year 8300) is the largest epoch taken; beyond
        // it a number is not a time this listener wrote.
        let at =
            |ts: &str| line_time(format!(r#"{{"level":"info","ts":{ts},"msg":"x"}}"#).as_bytes());
        assert_eq!(
            at("200000000000"),
            Some(Timestamp::from_second(200_000_000_000).unwrap())
        );
        assert_eq!(at("200000000001"), None);
        assert_eq!(at("-200000000001"), None);
    }
}
