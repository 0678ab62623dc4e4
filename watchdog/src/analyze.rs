//! `arc-watchdog analyze FILE...`: replays saved listener logs (one file per
//! container run, oldest first) through the same [`Parser`] and
//! [`Detector`] as `run`, and reports what `run` would have seen and done.
//!
//! Each file becomes [`Input::RunStarted`], one [`Input::Entry`] per line
//! and [`Input::RunEnded`] (exit code unknown, the pod not living on), with
//! time taken from the lines themselves (the `kubectl --timestamps` prefix,
//! else the line's own time; a line without one takes the time of the line
//! before).
//!
//! Output (one JSON object on stdout; exit 0 whether or not a loop was
//! found, non-zero with a message on stderr when a file cannot be read):
//!
//! ```json
//! {
//!   "conflicts": 3,
//!   "loop_detected": true,
//!   "crash_loop": "session_conflict",
//!   "runs": [{"file": "gen1.log", "lines": 4, "first": "2026-03-02T04:10:00Z",
//!             "last": "2026-03-02T04:10:02Z", "conflicts": 1, "established": false,
//!             "fatal": "session_conflict", "truncated_lines": 0}],
//!   "decisions": [{"run": 2, "action": "delay_start", "at": "2026-03-02T04:10:14Z",
//!                  "until": "2026-03-02T04:10:44Z", "delay_ms": 30000, "message": "..."}],
//!   "start_gate_closed_until": "2026-03-02T04:10:44Z"
//! }
//! ```
//!
//! `action` is `report` (with `reason`, the Kubernetes Event reason),
//! `delay_start` or `evict` (with `cause`).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use jiff::Timestamp;
use serde::Serialize;

use crate::detector::{Cause, Decision, Detector, Input, Reason, StartGate};
use crate::parser::{Entry, ListenerEvent, Parser};
use crate::settings::Thresholds;

/// Flags of `arc-watchdog analyze`.
#[derive(Debug, Clone, Args)]
pub struct AnalyzeArgs {
    /// The detector's thresholds (the same flags and defaults as `run`).
    #[command(flatten)]
    pub thresholds: Thresholds,

    /// Saved listener logs, one file per container run, oldest first
    /// (`kubectl logs`, with or without `--timestamps`).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Why `analyze` could not produce a verdict.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The thresholds contradict each other.
    #[error("invalid thresholds: {0}")]
    Thresholds(String),
}

/// Summary of one file (one container run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// The file as given.
    pub file: String,
    /// Physical lines.
    pub lines: u64,
    /// Time of the first and last line with a time.
    pub first: Option<Timestamp>,
    /// See `first`.
    pub last: Option<Timestamp>,
    /// Session conflicts counted in this run.
    pub conflicts: u64,
    /// The run got its message session.
    pub established: bool,
    /// The fatal error the run ended with, if any (`session_conflict`,
    /// `auth`, `not_found`, `rate_limited`, `network`, `other`).
    pub fatal: Option<Cause>,
    /// Lines cut to the parser's line limit.
    pub truncated_lines: u64,
}

/// A decision, with the run it happened in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnalyzedDecision {
    /// Index of the file (0-based) during which it was decided.
    pub run: usize,
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
}

/// The verdict: what `run` would have seen and done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Session conflicts counted (deduplicated, not after an established
    /// session in the same run).
    pub conflicts: u64,
    /// A session-conflict loop was detected.
    pub loop_detected: bool,
    /// The cause of a start-up crash loop, if one was detected.
    pub crash_loop: Option<Cause>,
    /// One summary per file, in order.
    pub runs: Vec<RunSummary>,
    /// What `run` would have done, and when.
    pub decisions: Vec<AnalyzedDecision>,
    /// The start gate after the last run: `null` when open, else the time
    /// it would open.
    pub start_gate_closed_until: Option<Timestamp>,
}

/// Incremental analysis: feed runs in order, then [`Analyzer::finish`].
#[derive(Debug)]
pub struct Analyzer {
    detector: Detector,
    parser: Parser,
    verdict: Verdict,
    run: Option<RunSummary>,
    started: bool,
    /// Time of the latest line with one (carried across runs).
    clock: Option<Timestamp>,
}

impl Analyzer {
    /// An analyzer with these thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            detector: Detector::new(thresholds),
            parser: Parser::new(),
            verdict: Verdict {
                conflicts: 0,
                loop_detected: false,
                crash_loop: None,
                runs: Vec::new(),
                decisions: Vec::new(),
                start_gate_closed_until: None,
            },
            run: None,
            started: false,
            clock: None,
        }
    }

    /// Starts the next run (file).
    pub fn begin_run(&mut self, name: &str) {
        self.end_run();
        self.parser = Parser::new();
        self.started = false;
        self.run = Some(RunSummary {
            file: name.to_owned(),
            lines: 0,
            first: None,
            last: None,
            conflicts: 0,
            established: false,
            fatal: None,
            truncated_lines: 0,
        });
    }

    /// Feeds the next bytes of the current run.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut parser = std::mem::take(&mut self.parser);
        parser.push(chunk, |e| self.entry(&e));
        self.parser = parser;
    }

    /// Ends the current run (also done by [`Analyzer::begin_run`] and
    /// [`Analyzer::finish`]).
    pub fn end_run(&mut self) {
        let Some(_) = self.run else { return };
        let mut parser = std::mem::take(&mut self.parser);
        parser.finish(|e| self.entry(&e));
        let Some(summary) = self.run.take() else {
            return;
        };
        if self.started {
            let at = summary.last.or(self.clock).unwrap_or(Timestamp::UNIX_EPOCH);
            self.feed(Input::RunEnded {
                at,
                exit_code: None,
                pod_lives_on: false,
            });
        }
        let mut summary = summary;
        summary.conflicts = self
            .verdict
            .decisions
            .iter()
            .filter(|d| {
                d.run == self.verdict.runs.len() && d.decision.reason() == Reason::SessionConflict
            })
            .count() as u64;
        self.verdict.runs.push(summary);
    }

    /// The verdict after the last run.
    pub fn finish(mut self) -> Verdict {
        self.end_run();
        let now = self.clock.unwrap_or(Timestamp::UNIX_EPOCH);
        self.verdict.start_gate_closed_until = match self.detector.start_gate(now) {
            StartGate::Open => None,
            StartGate::Closed { until } => Some(until),
        };
        self.verdict
    }

    fn feed(&mut self, input: Input) {
        let run = self.verdict.runs.len();
        for decision in self.detector.handle(input) {
            match decision.reason() {
                Reason::SessionConflict => self.verdict.conflicts += 1,
                Reason::ConflictLoopDetected => self.verdict.loop_detected = true,
                _ => {}
            }
            if matches!(
                decision.reason(),
                Reason::ConflictLoopDetected | Reason::CrashLoopDetected
            ) && let Some(l) = self.detector.history().loop_state
                && l.crash_loop
            {
                self.verdict.crash_loop = Some(l.cause);
            }
            self.verdict
                .decisions
                .push(AnalyzedDecision { run, decision });
        }
    }

    fn entry(&mut self, e: &Entry<'_>) {
        let Some(summary) = self.run.as_mut() else {
            return;
        };
        summary.lines += 1;
        summary.truncated_lines += u64::from(e.truncated());
        let own = if e.continuation { None } else { e.time() };
        if let Some(t) = own {
            summary.first.get_or_insert(t);
            summary.last = Some(t);
            self.clock = Some(t);
        }
        match e.event {
            ListenerEvent::SessionEstablished => summary.established = true,
            ListenerEvent::SessionConflict { fatal: true } => {
                summary.fatal = Some(Cause::SessionConflict);
            }
            ListenerEvent::Fatal(kind) => summary.fatal = Some(Cause::from(kind)),
            ListenerEvent::SessionConflict { fatal: false } | ListenerEvent::Other => {}
        }
        let at = self.clock.unwrap_or(Timestamp::UNIX_EPOCH);
        if !self.started {
            self.started = true;
            let run_id = format!("file-{}", self.verdict.runs.len());
            self.feed(Input::RunStarted {
                at,
                run_id,
                in_place: false,
            });
        }
        self.feed(Input::Entry {
            at,
            event: e.event,
            key: e.key(),
        });
    }
}

/// Analyzes files in order. Fails on the first unreadable file.
pub fn analyze_files(thresholds: Thresholds, files: &[PathBuf]) -> Result<Verdict, AnalyzeError> {
    thresholds.validate().map_err(AnalyzeError::Thresholds)?;
    let mut analyzer = Analyzer::new(thresholds);
    let mut buf = vec![0u8; 256 * 1024];
    for path in files {
        analyzer.begin_run(&path.display().to_string());
        read_into(path, &mut buf, &mut analyzer)?;
    }
    Ok(analyzer.finish())
}

fn read_into(path: &Path, buf: &mut [u8], analyzer: &mut Analyzer) -> Result<(), AnalyzeError> {
    let err = |source| AnalyzeError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => analyzer.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
}

/// The verdict of an in-memory set of runs (tests, tools).
pub fn analyze_bytes(thresholds: Thresholds, runs: &[(&str, &[u8])]) -> Verdict {
    let mut analyzer = Analyzer::new(thresholds);
    for (name, data) in runs {
        analyzer.begin_run(name);
        analyzer.push(data);
    }
    analyzer.finish()
}

/// `arc-watchdog analyze`: prints the verdict as JSON on stdout.
pub fn command(args: AnalyzeArgs) -> Result<(), AnalyzeError> {
    let verdict = analyze_files(args.thresholds, &args.files)?;
    let json = serde_json::to_string_pretty(&verdict).unwrap_or_else(|_| "{}".to_owned());
    println!("{json}");
    Ok(())
}
