//! Parser tests: every format of `arc-facts.md`, the shared samples, and
//! look-alikes that must not count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use arc_watchdog::parser::{
    Entry, EntryKey, FatalKind, ListenerEvent, LogFormat, OwnedEntry, Parser, classify, line_time,
    lossy, parse_kubectl_prefix, sample_log_with_stats,
};

const CONFLICT: ListenerEvent = ListenerEvent::SessionConflict { fatal: true };
const RETRY_CONFLICT: ListenerEvent = ListenerEvent::SessionConflict { fatal: false };
const EST: ListenerEvent = ListenerEvent::SessionEstablished;
const OTHER: ListenerEvent = ListenerEvent::Other;

fn fatal(kind: FatalKind) -> ListenerEvent {
    ListenerEvent::Fatal(kind)
}

fn sample(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/samples/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn parse(data: &[u8]) -> Vec<OwnedEntry> {
    let mut out = Vec::new();
    Parser::parse_all(data, |e| out.push(e.to_owned_entry()));
    out
}

fn events(data: &[u8]) -> Vec<ListenerEvent> {
    parse(data)
        .into_iter()
        .map(|e| e.event)
        .filter(|e| *e != OTHER)
        .collect()
}

/// Real lines of every format and version, and what they mean.
const TABLE: &[(&str, ListenerEvent)] = &[
    // Fatal session conflicts, stdlib logger, per version.
    (
        "2025/01/20 09:00:01 Application returned an error: createSession failed: failed to create session: 409 - had issue communicating with Actions backend: The runner scale set gpu-runners already has an active session for owner gpu-runners-5d8e7f61-listener.",
        CONFLICT,
    ),
    (
        "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 409, AcivityId \"3f5c9a2e-8d1b-4c7a-9e2f-0b6d4a1c7e51\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-runner-set already has an active session.",
        CONFLICT,
    ),
    (
        "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: failed to do the session request: actions error: StatusCode 409, AcivityId \"x\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-runner-set already has an active session.",
        CONFLICT,
    ),
    (
        "2026/09/14 22:01:01 Application returned an error: failed to create actions message session client: failed to create message session: failed to do the session request: request POST https://pipelines.actions.githubusercontent.com/X/_apis/runtime/runnerscalesets/7/sessions?api-version=6.0-preview failed(status=\"409 Conflict\", activity_id=9b1e2c44-0d7f-4a55-8c3e-51aa0e2f6d11): unexpected status code 409 Conflict: GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scale set linux-x64 already has an active session for owner linux-x64-6c9f2a1b-listener.",
        CONFLICT,
    ),
    // Microseconds in the Go logger's date.
    (
        "2026/03/02 04:10:02.123456 Application returned an error: createSession failed: x: GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, y",
        CONFLICT,
    ),
    // Legacy 0.7 listener retry, zap text and JSON.
    (
        "2023-05-01T10:00:00Z\tINFO\tauto-scaler\tUnable to create message session. Will try again in 30 seconds\t{\"error\": \"actions error: StatusCode 409, AcivityId \\\"a\\\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset x already has an active session.\"}",
        RETRY_CONFLICT,
    ),
    (
        "{\"level\":\"info\",\"ts\":1682935200.1,\"logger\":\"auto-scaler\",\"msg\":\"Unable to create message session. Will try again in 30 seconds\",\"error\":\"409 - had issue communicating with Actions backend: The runner scale set x already has an active session for owner y.\"}",
        RETRY_CONFLICT,
    ),
    // A legacy retry for another reason is not a conflict.
    (
        "2023-05-01T10:00:00Z\tINFO\tauto-scaler\tUnable to create message session. Will try again in 30 seconds\t{\"error\": \"dial tcp: connection refused\"}",
        OTHER,
    ),
    // Session established, every format.
    (
        "2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{\"lastMessageID\": 0}",
        EST,
    ),
    (
        "2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tCurrent runner scale set statistics.\t{\"statistics\": \"{}\"}",
        EST,
    ),
    (
        "2023-05-01T10:00:02Z\tINFO\tauto-scaler\tcurrent runner scale set statistics.\t{\"statistics\": \"{}\"}",
        EST,
    ),
    (
        "{\"severity\":\"info\",\"ts\":\"2026-03-02T05:00:02Z\",\"logger\":\"listener-app.listener\",\"message\":\"Getting next message\",\"lastMessageID\":0}",
        EST,
    ),
    (
        "{\"severity\":\"info\",\"ts\":\"2026-03-02T05:00:02Z\",\"logger\":\"listener-app.listener\",\"message\": \"Current runner scale set statistics.\"}",
        EST,
    ),
    (
        "time=2026-09-14T22:01:10.118Z level=INFO source=/workspace/listener.go:180 msg=\"Handling initial session statistics\" component=listener",
        EST,
    ),
    // A user field named like the other encoder's message key, after the message.
    (
        "{\"severity\":\"debug\",\"ts\":\"2026-03-02T05:00:02Z\",\"logger\":\"listener-app.listener\",\"message\":\"Getting next message\",\"msg\":\"x\"}",
        EST,
    ),
    (
        "time=2026-09-14T22:01:10.119Z level=DEBUG source=/workspace/listener.go:181 msg=\"Getting next message\" component=listener lastMessageID=0",
        EST,
    ),
    (
        "{\"time\":\"2026-09-14T22:01:10.118Z\",\"level\":\"DEBUG\",\"source\":{\"function\":\"f\",\"file\":\"/x.go\",\"line\":1},\"msg\":\"Getting next message\",\"component\":\"listener\",\"lastMessageID\":0}",
        EST,
    ),
    // Other fatal errors, by kind.
    (
        "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 404, AcivityId \"a\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetNotFoundException, GitHub.Actions.Runtime.WebApi: No runner scale set found with identifier 7.",
        ListenerEvent::Fatal(FatalKind::NotFound),
    ),
    (
        "2026/09/14 22:01:01 Application returned an error: failed to create actions message session client: failed to get runner registration token: request POST https://api.github.com/app/installations/1/access_tokens failed(status=\"401 Unauthorized\"): Bad credentials",
        ListenerEvent::Fatal(FatalKind::Auth),
    ),
    (
        "2026/09/14 22:01:01 Application returned an error: failed to get pipeline url: github api error: StatusCode 403, RequestID \"r\": API rate limit exceeded for installation ID 1.",
        ListenerEvent::Fatal(FatalKind::RateLimited),
    ),
    (
        "2026/09/14 22:01:01 Application returned an error: failed to get registration token: github api error: StatusCode 403, RequestID \"r\": Resource not accessible by integration",
        ListenerEvent::Fatal(FatalKind::Auth),
    ),
    (
        "2026/09/14 22:01:01 Application returned an error: failed to get message: Get \"https://pipelines.actions.githubusercontent.com/x/_apis/runtime/runnerscalesets/7/messages\": EOF",
        ListenerEvent::Fatal(FatalKind::Network),
    ),
    (
        "2026/09/14 22:01:01 Application returned an error: createSession failed: Post \"https://x/sessions\": dial tcp 10.0.0.1:443: connect: connection refused",
        ListenerEvent::Fatal(FatalKind::Network),
    ),
    (
        "2026/09/14 22:01:01 Application returned an error: failed to get message: context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
        ListenerEvent::Fatal(FatalKind::Network),
    ),
    (
        "2026/09/14 22:01:01 Application returned an error: failed to initialize: invalid configuration: minRunners > maxRunners",
        ListenerEvent::Fatal(FatalKind::Other),
    ),
    // The legacy listener of 0.8 to 0.10 (`github-runnerscaleset-listener`),
    // as the real 0.10.1 binary writes it against a stale session:
    // lower-case `unable`, logger `auto_scaler`.
    (
        "2026-12-05T08:26:12Z\tINFO\tauto_scaler\tunable to create message session. Will try again in 30 seconds\t{\"error\": \"actions error: StatusCode 409, AcivityId \\\"00000000-0000-4000-8000-fa4e00000001\\\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-e2e already has an active session for owner arc-e2e-crashed-listener.\"}",
        RETRY_CONFLICT,
    ),
    // Its last entry after ten tries: zap's `Error encountered`, the chain in
    // the `error` field (cmd/githubrunnerscalesetlistener/main.go).
    (
        "2026-12-05T08:31:40Z\tERROR\tauto_scaler\tError encountered\t{\"error\": \"failed to create a message listener: create message session failed since it exceed 10 retry limit. actions error: StatusCode 409, AcivityId \\\"00000000-0000-4000-8000-fa4e00000001\\\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-e2e already has an active session for owner arc-e2e-crashed-listener.\"}",
        CONFLICT,
    ),
    (
        "2026-12-05T08:31:40Z\tERROR\tauto_scaler\tError encountered\t{\"error\": \"failed to create a message listener: create message session failed since it exceed 10 retry limit. actions error: StatusCode 401, AcivityId \\\"x\\\": Unauthorized\"}",
        ListenerEvent::Fatal(FatalKind::Auth),
    ),
    // Its other message with the same start, no error field: not a conflict.
    (
        "2026-12-05T08:26:12Z\tINFO\tauto_scaler\tunable to create message session. The error indicates something is wrong on the client side, won't make any retry.",
        OTHER,
    ),
];

/// Look-alikes: they say 409, conflict, session, or even the exception's
/// name, but are not a conflict on creating the message session.
const LOOK_ALIKES: &[(&str, ListenerEvent)] = &[
    // Kubernetes optimistic concurrency, zap text and slog JSON.
    (
        "2026-03-02T05:00:41Z\tERROR\tlistener-app.worker.kubernetesworker\tcould not patch ephemeral runner status\t{\"error\": \"Operation cannot be fulfilled on ephemeralrunners.actions.github.com \\\"x\\\": the object has been modified; please apply your changes to the latest version and try again (409 Conflict)\"}",
        OTHER,
    ),
    (
        "{\"time\":\"2026-09-14T22:01:12Z\",\"level\":\"ERROR\",\"msg\":\"failed to patch\",\"component\":\"worker\",\"error\":\"Operation cannot be fulfilled on ephemeralrunnersets.actions.github.com \\\"x\\\": the object has been modified; please apply your changes to the latest version and try again\"}",
        OTHER,
    ),
    // The fatal line for a Kubernetes 409 is a fatal error, not a conflict.
    (
        "2026/03/02 04:10:02 Application returned an error: failed to patch ephemeral runner set: Operation cannot be fulfilled on ephemeralrunnersets.actions.github.com \"x\": the object has been modified; please apply your changes to the latest version and try again (409 Conflict)",
        ListenerEvent::Fatal(FatalKind::Other),
    ),
    // Job acquisition 409.
    (
        "2026-03-02T05:00:43Z\tERROR\tlistener-app.listener\tfailed to acquire jobs\t{\"error\": \"actions error: StatusCode 409, AcivityId \\\"x\\\": GitHub.Actions.Runtime.WebApi.TaskAgentJobNotFoundException\"}",
        OTHER,
    ),
    (
        "2026/03/02 04:10:02 Application returned an error: failed to acquire jobs: actions error: StatusCode 409, AcivityId \"x\": GitHub.Actions.Runtime.WebApi.JobAlreadyAcquiredException",
        ListenerEvent::Fatal(FatalKind::Other),
    ),
    // A 409 on another endpoint, 0.14 format.
    (
        "2026/09/14 22:01:01 Application returned an error: failed to handle message: request POST https://x/_apis/runtime/runnerscalesets/7/acquirejobs failed(status=\"409 Conflict\", activity_id=a): unexpected status code 409 Conflict",
        ListenerEvent::Fatal(FatalKind::Other),
    ),
    // The session had expired when the listener deleted it: not a conflict.
    (
        "2026/03/02 04:10:02 Application returned an error: failed to delete message session: actions error: StatusCode 404, AcivityId \"y\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionExpiredException: session expired",
        ListenerEvent::Fatal(FatalKind::NotFound),
    ),
    (
        "2026-03-02T05:00:43Z\tERROR\tlistener-app.listener\tfailed to delete session\t{\"error\": \"GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionExpiredException\"}",
        OTHER,
    ),
    // The exception's name inside a field of an unrelated message.
    (
        "2026-03-02T05:00:43Z\tINFO\tlistener-app.listener\tProcessing message\t{\"body\": \"createSession failed: RunnerScaleSetSessionConflictException already has an active session\"}",
        OTHER,
    ),
    (
        "{\"time\":\"2026-09-14T22:01:12Z\",\"level\":\"INFO\",\"msg\":\"note\",\"detail\":\"2026/09/14 22:01:01 Application returned an error: createSession failed: RunnerScaleSetSessionConflictException\"}",
        OTHER,
    ),
    (
        "time=2026-09-14T22:01:12Z level=ERROR msg=\"failed to do something\" error=\"createSession failed: RunnerScaleSetSessionConflictException\"",
        OTHER,
    ),
    // The word conflict elsewhere.
    (
        "2026-03-02T05:00:43Z\tINFO\tlistener-app.listener\tResolved conflict in runner names\t{}",
        OTHER,
    ),
    // "Getting next message" as part of another message or inside a field.
    (
        "2026-03-02T05:00:43Z\tERROR\tlistener-app.listener\tError getting next message\t{\"error\": \"EOF\"}",
        OTHER,
    ),
    (
        "{\"time\":\"2026-09-14T22:01:12Z\",\"level\":\"INFO\",\"msg\":\"Processing message\",\"last\":\"Getting next message\"}",
        OTHER,
    ),
    (
        "{\"time\":\"2026-09-14T22:01:12Z\",\"level\":\"INFO\",\"msg\":\"x\",\"inner\":\"{\\\"msg\\\":\\\"Getting next message\\\"}\"}",
        OTHER,
    ),
    (
        "time=2026-09-14T22:01:12Z level=INFO msg=\"Processing message\" note=\"msg=Getting next message\"",
        OTHER,
    ),
    // A fatal conflict line that was cut before the exception: fatal, not a conflict.
    (
        "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 409, AcivityId \"3f5c9a2e-8d1b",
        ListenerEvent::Fatal(FatalKind::Other),
    ),
    // Truncated starts and stack-trace lines.
    ("2026/03/02 04:10:02 Application returned an", OTHER),
    ("2026/03/0", OTHER),
    ("main.(*App).createSession", OTHER),
    (
        "\t/workspace/cmd/ghalistener/app/app.go:124 RunnerScaleSetSessionConflictException",
        OTHER,
    ),
    (
        "goroutine 1 [running]: createSession failed: RunnerScaleSetSessionConflictException",
        OTHER,
    ),
    ("", OTHER),
    ("{", OTHER),
    ("time=", OTHER),
    ("\u{0}\u{0}\u{0}", OTHER),
    // A scale set with id 409 in a session URL is not a status code.
    (
        "2026/09/14 22:01:01 Application returned an error: failed to create message session: request POST https://x/_apis/runtime/runnerscalesets/409/sessions failed: dial tcp: i/o timeout",
        ListenerEvent::Fatal(FatalKind::Network),
    ),
];

#[test]
fn table_of_formats() {
    for (line, want) in TABLE {
        assert_eq!(classify(line.as_bytes()), *want, "line: {line}");
    }
}

#[test]
fn look_alikes_do_not_count() {
    for (line, want) in LOOK_ALIKES {
        assert_eq!(classify(line.as_bytes()), *want, "line: {line}");
    }
}

#[test]
fn every_line_also_classifies_with_kubectl_prefix_and_crlf() {
    for (line, want) in TABLE.iter().chain(LOOK_ALIKES) {
        let decorated = format!("2026-03-02T04:10:02.123456789Z {line}\r");
        assert_eq!(classify(decorated.as_bytes()), *want, "line: {decorated}");
        let mut entries = parse(format!("{decorated}\n").as_bytes());
        assert_eq!(entries.len(), 1);
        let e = entries.remove(0);
        assert_eq!(e.event, *want, "line: {decorated}");
        assert_eq!(e.content, line.as_bytes());
        assert_eq!(
            e.stamp,
            Some("2026-03-02T04:10:02.123456789Z".parse().unwrap())
        );
    }
}

#[test]
fn samples_conflict_loop_0_10_1() {
    for generation in ["gen1", "gen2", "gen3"] {
        let data = sample(&format!("conflict-loop-0.10.1-text/{generation}.log"));
        assert_eq!(events(&data), vec![CONFLICT], "{generation}");
    }
}

#[test]
fn samples_conflict_0_14_2_json() {
    for generation in ["gen1", "gen2"] {
        let data = sample(&format!("conflict-0.14.2-json/{generation}.log"));
        assert_eq!(events(&data), vec![CONFLICT], "{generation}");
        let entries = parse(&data);
        assert_eq!(entries[0].as_entry().format(), LogFormat::SlogJson);
        assert_eq!(entries[1].as_entry().format(), LogFormat::Stdlib);
    }
}

#[test]
fn samples_conflict_0_9_0() {
    let data = sample("conflict-0.9.0-text.log");
    assert_eq!(events(&data), vec![CONFLICT]);
}

#[test]
fn samples_healthy_with_k8s_409() {
    let data = sample("healthy-0.10.1-with-k8s-409.log");
    // Two "Getting next message" and the statistics line; the k8s 409 is Other.
    assert_eq!(events(&data), vec![EST, EST, EST]);
    let entries = parse(&data);
    assert_eq!(entries.len(), 11);
    assert!(
        entries
            .iter()
            .all(|e| e.as_entry().format() == LogFormat::ZapText)
    );
}

#[test]
fn chunking_never_changes_the_result() {
    let mut data = Vec::new();
    for (line, _) in TABLE.iter().chain(LOOK_ALIKES) {
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
    let whole = parse(&data);
    for chunk in [1usize, 2, 3, 7, 64, 1000] {
        let mut p = Parser::new();
        let mut got = Vec::new();
        for c in data.chunks(chunk) {
            p.push(c, |e| got.push(e.to_owned_entry()));
        }
        p.finish(|e| got.push(e.to_owned_entry()));
        assert_eq!(got, whole, "chunk size {chunk}");
    }
    let want: Vec<_> = TABLE.iter().chain(LOOK_ALIKES).map(|(_, e)| *e).collect();
    let got: Vec<_> = whole.iter().map(|e| e.event).collect();
    assert_eq!(got, want);
}

#[test]
fn last_line_without_newline_is_flushed() {
    let mut p = Parser::new();
    let mut got = Vec::new();
    p.push(TABLE[0].0.as_bytes(), |e| got.push(e.event));
    assert!(got.is_empty());
    p.finish(|e| got.push(e.event));
    assert_eq!(got, vec![CONFLICT]);
}

#[test]
fn four_megabyte_line_with_marker_at_the_end() {
    let mut line = b"2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 4 << 20));
    line.extend_from_slice(b" GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: already has an active session.\r\n");
    line.extend_from_slice(TABLE[8].0.as_bytes());
    line.push(b'\n');
    for chunk in [4096usize, 65_536, 1 << 20, line.len()] {
        let mut p = Parser::with_max_line(16 * 1024);
        let mut got: Vec<(ListenerEvent, usize, usize, bool)> = Vec::new();
        for c in line.chunks(chunk) {
            p.push(c, |e: Entry<'_>| {
                got.push((e.event, e.content.len(), e.len, e.truncated()))
            });
        }
        p.finish(|e| got.push((e.event, e.content.len(), e.len, e.truncated())));
        assert_eq!(got.len(), 2, "chunk {chunk}");
        assert_eq!(got[0].0, CONFLICT, "chunk {chunk}");
        assert!(got[0].3, "truncated, chunk {chunk}");
        assert!(got[0].1 <= 16 * 1024);
        // The whole length is known, without the CR.
        assert_eq!(got[0].2, line.iter().position(|&b| b == b'\r').unwrap());
        assert_eq!(got[1].0, EST, "the next line is intact, chunk {chunk}");
    }
}

#[test]
fn megabyte_line_split_marker_across_chunks() {
    // The exception name straddles the buffer limit and a chunk boundary.
    let head = b"2026/03/02 04:10:02 Application returned an error: createSession failed: ";
    let marker = b"RunnerScaleSetSessionConflictException";
    for pad in [1024 - head.len() - 10, 1024 - head.len(), 5000] {
        let mut line = head.to_vec();
        line.extend(std::iter::repeat_n(b'y', pad));
        line.extend_from_slice(marker);
        line.push(b'\n');
        for chunk in [1usize, 13, 1000, 1024, 1030] {
            let mut p = Parser::with_max_line(1024);
            let mut got = Vec::new();
            for c in line.chunks(chunk) {
                p.push(c, |e| got.push(e.event));
            }
            assert_eq!(got, vec![CONFLICT], "pad {pad} chunk {chunk}");
        }
    }
}

#[test]
fn long_ordinary_line_is_other_and_bounded() {
    let mut data = b"2026-03-02T05:00:41Z\tINFO\tlistener-app\tbig\t{\"x\": \"".to_vec();
    data.extend(std::iter::repeat_n(b'z', 3 << 20));
    data.extend_from_slice(b" RunnerScaleSetSessionConflictException\"}\n");
    let mut p = Parser::with_max_line(4096);
    let mut got = Vec::new();
    for c in data.chunks(100_000) {
        p.push(c, |e| got.push((e.event, e.content.len())));
    }
    assert_eq!(got, vec![(OTHER, 4096)]);
}

#[test]
fn nul_and_invalid_utf8_are_tolerated() {
    let mut data = Vec::new();
    data.extend_from_slice(b"\x00\x00\xff\xfe garbage \xc3\x28\n");
    data.extend_from_slice(b"2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{\"x\": \"\xff\x00\"}\n");
    data.extend_from_slice(b"2026/03/02 04:10:02 Application returned an error: \xff\x00 createSession failed: \xc3 RunnerScaleSetSessionConflictException \x00\n");
    data.extend_from_slice(b"\x00\n");
    let got = parse(&data);
    let evs: Vec<_> = got.iter().map(|e| e.event).collect();
    assert_eq!(evs, vec![OTHER, EST, CONFLICT, OTHER]);
    assert!(got[0].continuation);
    assert!(got[0].as_entry().text().contains('\u{fffd}'));
}

#[test]
fn lossy_keeps_valid_text_and_marks_invalid_bytes() {
    assert_eq!(lossy(b"Getting next message"), "Getting next message");
    assert_eq!(lossy(b"a\xffb\xc3"), "a\u{fffd}b\u{fffd}");
    assert_eq!(lossy(b""), "");
}

#[test]
fn zone_offsets_without_colon_are_read_and_nothing_else_is() {
    let at = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
    assert_eq!(
        line_time(br#"{"time":"2026-03-02T04:10:00-0130","msg":"x"}"#),
        at("2026-03-02T05:40:00Z")
    );
    assert_eq!(
        line_time(b"time=2026-03-02T04:10:00+0100 level=INFO msg=x"),
        at("2026-03-02T03:10:00Z")
    );
    // An offset alone, too short to hold one, no sign, not digits (slog's
    // text format: no fallback to epoch seconds).
    for ts in [
        "+0100",
        "0100",
        "abc",
        "",
        "2026-03-02T04:10:00Z0100",
        "2026-03-02T04:10:00+01ab",
    ] {
        let line = format!("time={ts} level=INFO msg=x");
        assert_eq!(line_time(line.as_bytes()), None, "{line}");
    }
}

#[test]
fn stack_trace_lines_continue_the_entry_above() {
    let data = b"2026-03-02T05:00:41Z\tERROR\tlistener-app\tfailed\t{\"error\": \"x\"}\n\
main.(*App).Run\n\
\t/workspace/cmd/ghalistener/app/app.go:124 createSession failed RunnerScaleSetSessionConflictException\n\
main.main\n\
\t/workspace/cmd/ghalistener/main.go:61\n\
2026-03-02T05:00:42Z\tINFO\tlistener-app.listener\tGetting next message\t{}\n";
    let got = parse(data);
    let cont: Vec<_> = got.iter().map(|e| e.continuation).collect();
    assert_eq!(cont, vec![false, true, true, true, true, false]);
    let evs: Vec<_> = got.iter().map(|e| e.event).collect();
    assert_eq!(evs, vec![OTHER, OTHER, OTHER, OTHER, OTHER, EST]);
}

#[test]
fn kubectl_prefix_and_dedupe_key() {
    let line = b"2026-03-02T04:10:02.5Z 2026/03/02 04:10:02 Application returned an error: createSession failed: RunnerScaleSetSessionConflictException";
    let (ts, off) = parse_kubectl_prefix(line).unwrap();
    assert_eq!(ts, "2026-03-02T04:10:02.5Z".parse().unwrap());
    assert_eq!(&line[off..off + 4], b"2026");
    let a = parse(line);
    let b = parse(line);
    let ka = a[0].as_entry().key().unwrap();
    assert_eq!(ka, b[0].as_entry().key().unwrap());
    // Same time, other content: another key.
    let other = b"2026-03-02T04:10:02.5Z something else";
    assert_ne!(ka, parse(other)[0].as_entry().key().unwrap());
    // No prefix, no key.
    assert_eq!(parse(&line[off..])[0].as_entry().key(), None);
    // The line's own time is still there.
    assert_eq!(
        parse(&line[off..])[0].as_entry().time(),
        Some("2026-03-02T04:10:02Z".parse().unwrap())
    );
}

#[test]
fn kubectl_prefix_option_is_stripped() {
    let got = parse(b"[pod/arc-listener/listener] 2026-03-02T04:10:02Z 2026/03/02 04:10:02 Application returned an error: createSession failed: RunnerScaleSetSessionConflictException\n");
    assert_eq!(got[0].event, CONFLICT);
    assert!(got[0].stamp.is_some());
}

#[test]
fn generated_sample_log_counts_match() {
    let (data, stats) = sample_log_with_stats(2 << 20);
    assert!(data.len() >= 2 << 20);
    let mut p = Parser::new();
    let (mut lines, mut conflicts, mut est, mut fatal) = (0u64, 0u64, 0u64, 0u64);
    for c in data.chunks(65_536) {
        p.push(c, |e| {
            lines += 1;
            match e.event {
                ListenerEvent::SessionConflict { .. } => conflicts += 1,
                ListenerEvent::SessionEstablished => est += 1,
                ListenerEvent::Fatal(_) => fatal += 1,
                ListenerEvent::Other => {}
            }
        });
    }
    p.finish(|_| lines += 1);
    assert_eq!(lines, stats.lines);
    assert!(stats.conflicts > 0 && stats.established > 0 && stats.fatal_other > 0);
    assert_eq!(conflicts, stats.conflicts);
    assert_eq!(est, stats.established);
    assert_eq!(fatal, stats.fatal_other);
}

#[test]
fn fatal_helpers() {
    assert!(CONFLICT.is_fatal() && CONFLICT.is_conflict());
    assert!(!RETRY_CONFLICT.is_fatal() && RETRY_CONFLICT.is_conflict());
    assert!(fatal(FatalKind::Auth).is_fatal());
    assert!(!EST.is_fatal());
    // Only a conflict is one: a fatal error of another kind, the session
    // held or an ordinary line are not.
    for ev in [fatal(FatalKind::Auth), EST, ListenerEvent::Other] {
        assert!(!ev.is_conflict(), "{ev:?}");
    }
}

#[test]
fn events_serialise_to_json_and_back() {
    for ev in [
        CONFLICT,
        RETRY_CONFLICT,
        EST,
        OTHER,
        fatal(FatalKind::Auth),
        fatal(FatalKind::RateLimited),
    ] {
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(serde_json::from_str::<ListenerEvent>(&json).unwrap(), ev);
    }
    assert_eq!(
        serde_json::to_string(&fatal(FatalKind::NotFound)).unwrap(),
        r#"{"fatal":"not_found"}"#
    );
}

#[test]
fn log_formats_and_fatal_kinds_have_their_stable_names() {
    use arc_watchdog::parser::{FatalKind, LogFormat};
    let formats = [
        LogFormat::Stdlib,
        LogFormat::ZapText,
        LogFormat::ZapJson,
        LogFormat::SlogText,
        LogFormat::SlogJson,
        LogFormat::Unknown,
    ];
    let kinds = [
        FatalKind::NotFound,
        FatalKind::Auth,
        FatalKind::RateLimited,
        FatalKind::Network,
        FatalKind::Other,
    ];
    let names = |names: Vec<&'static str>| names.join(" ");
    assert_eq!(
        names(formats.map(LogFormat::as_str).to_vec()),
        "stdlib zap_text zap_json slog_text slog_json unknown"
    );
    assert_eq!(
        names(kinds.map(FatalKind::as_str).to_vec()),
        "not_found auth rate_limited network other"
    );
}

#[test]
fn a_line_is_seen_once_per_time_and_a_newer_time_starts_over() {
    let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    let key = |at: &str, hash: u64| EntryKey { at: t(at), hash };
    let mut high_water = None;
    let mut seen = Vec::new();
    let mut sight = |k: EntryKey| k.first_sighting(&mut high_water, &mut seen, 2);
    assert!(sight(key("2026-03-02T04:10:02Z", 1)));
    assert!(
        !sight(key("2026-03-02T04:10:02Z", 1)),
        "the same line again"
    );
    // The same content at a later time is a new line, and moves the mark.
    assert!(sight(key("2026-03-02T04:10:03Z", 1)));
    assert!(
        !sight(key("2026-03-02T04:10:02Z", 2)),
        "older than the mark"
    );
    // At one time, the last `max_seen` hashes are kept: 1 and 2 of three
    // lines, then 2 and 3.
    assert!(sight(key("2026-03-02T04:10:03Z", 2)));
    assert!(
        !sight(key("2026-03-02T04:10:03Z", 1)),
        "two kept: 1 still there"
    );
    assert!(sight(key("2026-03-02T04:10:03Z", 3)));
    assert!(!sight(key("2026-03-02T04:10:03Z", 2)));
    assert!(sight(key("2026-03-02T04:10:03Z", 1)), "1 was dropped for 3");
}

#[test]
fn a_dropped_partial_line_leaves_nothing_behind() {
    let mut p = Parser::with_max_line(1024);
    let mut got: Vec<(ListenerEvent, usize, bool)> = Vec::new();
    p.push(
        b"2026/03/02 04:10:02 Application returned an error: createSession failed: Runner",
        |_| unreachable!("no line ends"),
    );
    p.reset_partial();
    let line = b"2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{}\n";
    p.push(line, |e| got.push((e.event, e.len, e.truncated())));
    assert_eq!(got, vec![(EST, line.len() - 1, false)]);
    // A partial line already past max_line is dropped as a whole.
    got.clear();
    p.push(&[b'x'; 3000], |_| unreachable!("no line ends"));
    p.reset_partial();
    p.push(line, |e| got.push((e.event, e.len, e.truncated())));
    assert_eq!(got, vec![(EST, line.len() - 1, false)]);
}

#[test]
fn a_default_parser_keeps_64_kib_of_a_line() {
    let mut p = Parser::new();
    let mut got = Vec::new();
    for len in [64 * 1024, 64 * 1024 + 1] {
        let mut line = vec![b'y'; len];
        line.push(b'\n');
        p.push(&line, |e| got.push((e.content.len(), e.truncated())));
    }
    assert_eq!(got, vec![(64 * 1024, false), (64 * 1024, true)]);
}

#[test]
fn only_a_line_longer_than_max_line_is_truncated() {
    let mut p = Parser::with_max_line(1024);
    let mut got = Vec::new();
    for len in [10, 1024, 1025, 5000] {
        let mut line = vec![b'y'; len];
        line.push(b'\n');
        p.push(&line, |e| got.push((e.len, e.content.len(), e.truncated())));
    }
    assert_eq!(
        got,
        vec![
            (10, 10, false),
            (1024, 1024, false),
            (1025, 1024, true),
            (5000, 1024, true)
        ]
    );
}

#[test]
fn the_longest_rfc3339_stamp_is_read_in_the_prefix_and_in_a_zap_line() {
    let stamp = "2026-03-02T11:10:02.123456789+07:00";
    assert_eq!(stamp.len(), 35);
    let at: jiff::Timestamp = "2026-03-02T04:10:02.123456789Z".parse().unwrap();
    let line = format!("{stamp} 2026/03/02 04:10:02 x");
    assert_eq!(parse_kubectl_prefix(line.as_bytes()), Some((at, 36)));
    let zap = format!("{stamp}\tINFO\tlistener-app.listener\tGetting next message");
    assert_eq!(line_time(zap.as_bytes()), Some(at));
    assert_eq!(classify(zap.as_bytes()), EST);
}
