//! `parse-throughput`: the listener-log parser on one core against
//! `grep -c` for the exception name, on the same generated file, in the
//! same run.
//!
//! The log comes from the parser's own generator
//! ([`arc_watchdog::parser::sample_log_with_stats`]: every format, stack
//! traces, look-alikes). The parser reads the file in 256 KiB chunks the
//! way the watchdog reads a follow stream, and classifies every line; its
//! counts must match what the generator wrote, or the figure is refused.

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arc_watchdog::parser::{ListenerEvent, Parser, sample_log_with_stats};

use crate::{Figure, ParseArgs};

/// The needle for grep: the name every look-alike shares.
const NEEDLE: &str = "RunnerScaleSetSessionConflictException";

/// Counts of one parser pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    lines: u64,
    conflicts: u64,
    established: u64,
}

fn parse_file(path: &Path) -> anyhow::Result<Counts> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut parser = Parser::new();
    let mut counts = Counts::default();
    let mut count = |event: ListenerEvent| {
        counts.lines += 1;
        match event {
            ListenerEvent::SessionConflict { .. } => counts.conflicts += 1,
            ListenerEvent::SessionEstablished => counts.established += 1,
            _ => {}
        }
    };
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        parser.push(&buf[..n], |e| count(e.event));
    }
    parser.finish(|e| count(e.event));
    Ok(counts)
}

fn grep_count(path: &Path) -> anyhow::Result<u64> {
    let out = std::process::Command::new("grep")
        .arg("-c")
        .arg(NEEDLE)
        .arg(path)
        .output()
        .context("running grep")?;
    if !out.status.success() {
        bail!("grep -c failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("reading grep's count")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The `parse-throughput` figure.
pub fn throughput(args: &ParseArgs) -> anyhow::Result<Vec<Figure>> {
    let size = args.log_mb.max(1) * 1_000_000;
    let runs = args.runs.max(1);
    let (log, stats) = sample_log_with_stats(size);
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let path = dir.path().join("listener.log");
    std::fs::write(&path, &log).with_context(|| format!("writing {}", path.display()))?;
    let bytes = log.len() as f64;
    drop(log);

    // One untimed pass of each warms the page cache for both.
    let expected_matches = grep_count(&path)?;
    let counts = parse_file(&path)?;
    if counts.lines != stats.lines
        || counts.conflicts != stats.conflicts
        || counts.established != stats.established
    {
        bail!(
            "the parser's counts {counts:?} differ from the generated log's {stats:?}: \
             a throughput of a wrong parser means nothing"
        );
    }
    if expected_matches <= counts.conflicts {
        bail!(
            "grep found {expected_matches} lines with {NEEDLE}, no more than the {} real \
             conflicts: the generated log has no look-alikes",
            counts.conflicts
        );
    }

    let mut parse_times = Vec::with_capacity(runs);
    let mut grep_times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let c = parse_file(&path)?;
        parse_times.push(t.elapsed());
        if c != counts {
            bail!("the parser counted differently on a second pass");
        }
        let t = Instant::now();
        let m = grep_count(&path)?;
        grep_times.push(t.elapsed());
        if m != expected_matches {
            bail!("grep counted differently on a second pass");
        }
    }
    let parse_mbps = bytes / 1e6 / median(parse_times).as_secs_f64();
    let grep_mbps = bytes / 1e6 / median(grep_times).as_secs_f64();
    Ok(vec![
        Figure::new("parse-throughput", format!("{parse_mbps:.0}"), "MB/s").against(
            parse_mbps / grep_mbps,
            format!(
                "grep -c {NEEDLE} ({grep_mbps:.0} MB/s; {:.0} MB log, {} lines, {} conflicts, {expected_matches} grep matches)",
                bytes / 1e6,
                counts.lines,
                counts.conflicts
            ),
        ),
    ])
}
