//! Property tests of the streaming parser: however the bytes are chunked and
//! however long the lines, it agrees with `classify` on each whole line and
//! never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use arc_watchdog::parser::{ListenerEvent, OwnedEntry, Parser, classify};
use proptest::prelude::*;

/// Line starts of every format, each deciding its event within its first
/// bytes (so that any tail appended keeps the decision in the kept head).
const HEADS: &[&str] = &[
    "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: ",
    "2026/09/14 22:01:01 Application returned an error: failed to create message session: ",
    "2026/09/14 22:01:01 Application returned an error: failed to get message: ",
    "2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{\"x\": \"",
    "2026-03-02T05:00:41Z\tERROR\tlistener-app.worker\tcould not patch\t{\"error\": \"",
    "2023-05-01T10:00:00Z\tINFO\tauto-scaler\tUnable to create message session. Will try again in 30 seconds\t{\"error\": \"",
    "{\"time\":\"2026-09-14T22:01:10Z\",\"level\":\"DEBUG\",\"msg\":\"Getting next message\",\"x\":\"",
    "{\"severity\":\"info\",\"ts\":1.5,\"message\":\"Processing message\",\"x\":\"",
    "time=2026-09-14T22:01:10Z level=INFO msg=\"Handling initial session statistics\" x=\"",
    "\t/workspace/cmd/ghalistener/main.go:61 ",
    "2026-03-02T04:10:02.123456789Z 2026/03/02 04:10:02 Application returned an error: createSession failed: ",
    "",
];

/// Pieces of tails: markers, look-alikes and noise.
const PIECES: &[&str] = &[
    "RunnerScaleSetSessionConflictException",
    "already has an active session",
    " 409 ",
    "StatusCode 404,",
    " 401 Unauthorized",
    "rate limit",
    ": EOF",
    "connection refused",
    "the object has been modified",
    "Getting next message",
    "\t",
    "\"",
    "\\",
    "\r",
    "\u{0}",
    "é",
];

fn tail() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(PIECES).prop_map(|p| p.as_bytes().to_vec()),
            2 => prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..64),
            1 => (1usize..3000).prop_map(|n| vec![b'x'; n]),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select(HEADS), tail()).prop_map(|(head, tail)| {
        let mut l = head.as_bytes().to_vec();
        l.extend(tail);
        l
    })
}

fn parse_chunked(data: &[u8], chunk: usize, max_line: usize) -> Vec<OwnedEntry> {
    let mut p = Parser::with_max_line(max_line);
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        p.push(c, |e| out.push(e.to_owned_entry()));
    }
    p.finish(|e| out.push(e.to_owned_entry()));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn streaming_agrees_with_classify(
        lines in prop::collection::vec(line(), 1..20),
        chunk in 1usize..5000,
        max_line in 1024usize..8192,
    ) {
        let mut data = lines.join(&b'\n');
        data.push(b'\n');
        let got = parse_chunked(&data, chunk, max_line);
        prop_assert_eq!(got.len(), lines.len());
        for (entry, line) in got.iter().zip(&lines) {
            let want = if entry.continuation { ListenerEvent::Other } else { classify(line) };
            prop_assert_eq!(entry.event, want, "line {:?}", String::from_utf8_lossy(line));
            prop_assert!(entry.content.len() <= max_line);
        }
        // Chunking never changes anything.
        prop_assert_eq!(parse_chunked(&data, data.len(), max_line), got);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..300) {
        let got = parse_chunked(&data, chunk, 1024);
        let newlines = data.iter().filter(|&&b| b == b'\n').count();
        let trailing = usize::from(!data.is_empty() && data.last() != Some(&b'\n'));
        prop_assert_eq!(got.len(), newlines + trailing);
        for line in data.split(|&b| b == b'\n') {
            let _ = classify(line);
        }
    }
}
