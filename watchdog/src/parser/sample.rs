//! A deterministic, realistic listener log for the benchmark and the tests:
//! every format in `arc-facts.md`, stack traces, look-alikes (Kubernetes
//! 409s, job-acquire 409s, the exception's name inside unrelated fields),
//! and a known number of real session conflicts and established sessions.

/// What [`sample_log_with_stats`] generated, for checking a parser's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleStats {
    /// Physical lines.
    pub lines: u64,
    /// Real session conflicts (fatal and legacy retry lines).
    pub conflicts: u64,
    /// Session-established lines.
    pub established: u64,
    /// Other fatal lines.
    pub fatal_other: u64,
}

/// One template line and what it counts as.
struct Template {
    text: &'static str,
    conflict: bool,
    established: bool,
    fatal: bool,
}

const fn t(text: &'static str) -> Template {
    Template {
        text,
        conflict: false,
        established: false,
        fatal: false,
    }
}

const fn est(text: &'static str) -> Template {
    Template {
        text,
        conflict: false,
        established: true,
        fatal: false,
    }
}

const fn conflict(text: &'static str) -> Template {
    Template {
        text,
        conflict: true,
        established: false,
        fatal: true,
    }
}

const fn fatal(text: &'static str) -> Template {
    Template {
        text,
        conflict: false,
        established: false,
        fatal: true,
    }
}

/// Common lines, repeated (the bulk of a real log).
const COMMON: &[Template] = &[
    est(
        "2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tGetting next message\t{\"lastMessageID\": 41}",
    ),
    t(
        "2026-03-02T05:00:40Z\tINFO\tlistener-app.listener\tProcessing message\t{\"messageId\": 42, \"messageType\": \"RunnerScaleSetJobMessages\"}",
    ),
    t(
        "2026-03-02T05:00:40Z\tINFO\tlistener-app.listener\tJob available message received\t{\"jobId\": 1842}",
    ),
    t(
        "2026-03-02T05:00:40Z\tINFO\tlistener-app.listener\tAcquiring jobs\t{\"count\": 1, \"requestIds\": \"[1842]\"}",
    ),
    t(
        "2026-03-02T05:00:41Z\tINFO\tlistener-app.worker.kubernetesworker\tPreparing EphemeralRunnerSet update\t{\"json\": \"{\\\"spec\\\":{\\\"patchID\\\":1,\\\"replicas\\\":1}}\"}",
    ),
    t(
        "2026-03-02T05:00:41Z\tERROR\tlistener-app.worker.kubernetesworker\tcould not patch ephemeral runner status\t{\"error\": \"Operation cannot be fulfilled on ephemeralrunners.actions.github.com \\\"arc-runner-set-x7k2p-runner-q9w8e\\\": the object has been modified; please apply your changes to the latest version and try again (409 Conflict)\"}",
    ),
    t("main.(*App).Run"),
    t("\t/workspace/cmd/ghalistener/app/app.go:124"),
    t(
        "2026-03-02T05:00:42Z\tINFO\tlistener-app.worker.kubernetesworker\tEphemeral runner set scaled.\t{\"namespace\": \"arc-runners\", \"name\": \"arc-runner-set-x7k2p\", \"replicas\": 1}",
    ),
    t(
        "2026-03-02T05:00:43Z\tERROR\tlistener-app.listener\tfailed to acquire jobs\t{\"error\": \"actions error: StatusCode 409, AcivityId \\\"x\\\": GitHub.Actions.Runtime.WebApi.TaskAgentJobNotFoundException: job already acquired\"}",
    ),
    t(
        "{\"severity\":\"info\",\"ts\":\"2026-03-02T05:01:00Z\",\"logger\":\"listener-app.listener\",\"message\":\"Processing message\",\"messageId\":43}",
    ),
    est(
        "{\"severity\":\"debug\",\"ts\":\"2026-03-02T05:01:00Z\",\"logger\":\"listener-app.listener\",\"message\":\"Getting next message\",\"lastMessageID\":43}",
    ),
    t(
        "{\"severity\":\"error\",\"ts\":\"2026-03-02T05:01:01Z\",\"logger\":\"listener-app.listener\",\"message\":\"Error from previous run\",\"error\":\"RunnerScaleSetSessionConflictException seen by a colleague; not ours\"}",
    ),
    t(
        "time=2026-09-14T22:01:10.118Z level=INFO source=/workspace/cmd/ghalistener/listener.go:201 msg=\"Processing message\" component=listener messageId=44",
    ),
    est(
        "time=2026-09-14T22:01:10.119Z level=DEBUG source=/workspace/cmd/ghalistener/listener.go:180 msg=\"Getting next message\" component=listener lastMessageID=44",
    ),
    t(
        "{\"time\":\"2026-09-14T22:01:11.118Z\",\"level\":\"INFO\",\"source\":{\"function\":\"listener.(*Listener).handleMessage\",\"file\":\"/workspace/listener.go\",\"line\":220},\"msg\":\"Job started message received\",\"component\":\"listener\",\"jobId\":1843}",
    ),
    t(
        "{\"time\":\"2026-09-14T22:01:12.118Z\",\"level\":\"WARN\",\"source\":{\"function\":\"worker.(*Worker).patch\",\"file\":\"/workspace/worker.go\",\"line\":90},\"msg\":\"conflict updating runner set, retrying\",\"component\":\"worker\",\"error\":\"409 Conflict: the object has been modified\"}",
    ),
];

/// Rare lines, one of them inserted every [`RARE_EVERY`] common lines.
const RARE: &[Template] = &[
    conflict(
        "2026/03/02 04:10:02 Application returned an error: createSession failed: failed to create session: actions error: StatusCode 409, AcivityId \"3f5c9a2e-8d1b-4c7a-9e2f-0b6d4a1c7e51\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scaleset arc-runner-set already has an active session.",
    ),
    fatal(
        "2026/03/02 04:10:02 Application returned an error: failed to get message: Get \"https://pipelines.actions.githubusercontent.com/x/_apis/runtime/runnerscalesets/7/messages\": EOF",
    ),
    conflict(
        "2026/09/14 22:01:01 Application returned an error: failed to create actions message session client: failed to create message session: failed to do the session request: request POST https://pipelines.actions.githubusercontent.com/Xyz/_apis/runtime/runnerscalesets/7/sessions?api-version=6.0-preview failed(status=\"409 Conflict\", activity_id=9b1e2c44-0d7f-4a55-8c3e-51aa0e2f6d11): unexpected status code 409 Conflict: GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionConflictException, GitHub.Actions.Runtime.WebApi: The actions runner scale set linux-x64 already has an active session for owner linux-x64-6c9f2a1b-listener.",
    ),
    fatal(
        "2026/03/02 04:10:02 Application returned an error: failed to delete message session: actions error: StatusCode 404, AcivityId \"y\": GitHub.Actions.Runtime.WebApi.RunnerScaleSetSessionExpiredException: session expired",
    ),
    est(
        "2026-03-02T05:00:02Z\tINFO\tlistener-app.listener\tCurrent runner scale set statistics.\t{\"statistics\": \"{}\"}",
    ),
    conflict(
        "2025/01/20 09:00:01 Application returned an error: createSession failed: failed to create session: 409 - had issue communicating with Actions backend: The runner scale set gpu-runners already has an active session for owner gpu-runners-5d8e7f61-listener.",
    ),
];

/// A rare line after this many common lines.
const RARE_EVERY: usize = 97;

/// A realistic log of at least `bytes` bytes (whole lines).
pub fn sample_log(bytes: usize) -> Vec<u8> {
    sample_log_with_stats(bytes).0
}

/// [`sample_log`] and what it contains.
pub fn sample_log_with_stats(bytes: usize) -> (Vec<u8>, SampleStats) {
    let mut out = Vec::with_capacity(bytes + 1024);
    let mut stats = SampleStats::default();
    let mut i = 0usize;
    let mut rare = 0usize;
    while out.len() < bytes {
        let tpl = if i % RARE_EVERY == RARE_EVERY - 1 {
            rare += 1;
            &RARE[rare % RARE.len()]
        } else {
            &COMMON[i % COMMON.len()]
        };
        out.extend_from_slice(tpl.text.as_bytes());
        out.push(b'\n');
        stats.lines += 1;
        stats.conflicts += u64::from(tpl.conflict);
        stats.established += u64::from(tpl.established);
        stats.fatal_other += u64::from(tpl.fatal && !tpl.conflict);
        i += 1;
    }
    (out, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_log_has_at_least_the_size_asked_in_whole_lines() {
        let log = sample_log(10_000);
        assert!(log.len() >= 10_000, "{}", log.len());
        assert!(log.len() < 10_000 + 1024, "{}", log.len());
        assert_eq!(log.last(), Some(&b'\n'));
        assert_eq!(log, sample_log_with_stats(10_000).0);
        // Asking for exactly a log's size gives that log, not a line more.
        assert_eq!(sample_log(log.len()), log);
    }

    #[test]
    fn rare_lines_stay_rare() {
        // One rare line after every RARE_EVERY - 1 common ones: fatal lines
        // and conflicts are a small share, as in a real listener's log.
        let (_, stats) = sample_log_with_stats(1_000_000);
        let rare = stats.conflicts + stats.fatal_other;
        assert!(rare > 0, "{stats:?}");
        assert!(rare * 50 < stats.lines, "{stats:?}");
    }
}
