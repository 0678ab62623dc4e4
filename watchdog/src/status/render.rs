//! The report as text: a table (`-o table`, `-o wide`) or JSON (`-o json`).
//! Colour only when asked for (the caller checks that stdout is a terminal).

use std::fmt::Write as _;

use jiff::Timestamp;

use super::model::{Report, Row, State};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One row per scale set, the columns an operator reads first.
    Table,
    /// The table with listener namespace, delay and detail.
    Wide,
    /// The report as JSON (stable field names, README).
    Json,
}

/// The report in `output` format at `now` (ages are relative to it),
/// coloured if `colour`.
pub fn render(report: &Report, output: Output, colour: bool, now: Timestamp) -> String {
    match output {
        Output::Json => {
            // Plain data with string keys: serialising cannot fail.
            let mut s = serde_json::to_string_pretty(report).unwrap_or_else(|_| "{}".to_owned());
            s.push('\n');
            s
        }
        Output::Table => table(report, false, colour, now),
        Output::Wide => table(report, true, colour, now),
    }
}

/// A duration the way kubectl shows ages: `45s`, `12m`, `3h`, `2d`.
pub fn age(from: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(from).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The state as a reader wants it: with the cause, the missing reason, or
/// the time the start waits for.
pub fn state_text(row: &Row) -> String {
    match (row.state, row.cause, row.missing, row.delayed_until) {
        (State::CrashLoop, Some(cause), _, _) => format!("crash loop ({})", cause.as_str()),
        (State::ListenerMissing, _, Some(m), _) => format!("listener missing ({})", m.as_str()),
        (State::StartDelayed, _, _, Some(until)) => {
            format!("start delayed until {}", until.strftime("%H:%M:%SZ"))
        }
        (state, ..) => state.as_str().replace('_', " "),
    }
}

fn colour_of(state: State) -> &'static str {
    match state {
        State::Healthy => "\x1b[32m",
        State::Starting | State::Unknown | State::StartDelayed => "\x1b[33m",
        _ => "\x1b[31m",
    }
}

fn table(report: &Report, wide: bool, colour: bool, now: Timestamp) -> String {
    let mut header = vec![
        "SCALE SET",
        "NAMESPACE",
        "ARC",
        "LISTENER POD",
        "PHASE",
        "SINCE",
        "WATCHDOG",
        "STATE",
        "CONFLICTS",
        "EVICTIONS/1H",
        "LAST DECISION",
    ];
    if wide {
        header.extend(["LISTENER NAMESPACE", "DETAIL"]);
    }
    let dash = || "-".to_owned();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(dash);
    let mut cells: Vec<Vec<String>> = Vec::new();
    for r in &report.rows {
        let mut line = vec![
            r.scale_set.clone(),
            r.namespace.clone(),
            opt(&r.arc_version),
            opt(&r.listener),
            opt(&r.pod_phase),
            r.since.map_or_else(dash, |t| age(t, now)),
            r.watchdog.as_str().replace('_', " "),
            state_text(r),
            r.conflicts_in_window.map_or_else(dash, |n| n.to_string()),
            r.evictions_last_hour.map_or_else(dash, |n| n.to_string()),
            r.last_decision
                .as_ref()
                .map_or_else(dash, |d| format!("{} {} ago", d.reason, age(d.at, now))),
        ];
        if wide {
            line.push(opt(&r.listener_namespace));
            line.push(r.detail.clone());
        }
        cells.push(line);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in &cells {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let state_col = 7;
    let mut out = String::new();
    let mut emit = |line: &[String], state: Option<State>| {
        let last = line.len() - 1;
        for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
            let pad = w.saturating_sub(c.chars().count());
            match state {
                Some(s) if colour && i == state_col => {
                    let _ = write!(out, "{}{c}\x1b[0m", colour_of(s));
                }
                _ => out.push_str(c),
            }
            if i < last {
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push('\n');
    };
    let header: Vec<String> = header.into_iter().map(str::to_owned).collect();
    emit(&header, None);
    for (line, r) in cells.iter().zip(&report.rows) {
        emit(line, Some(r.state));
    }
    if report.rows.is_empty() {
        out.push_str("no scale sets found\n");
    }
    for lacked in &report.lacked_rights {
        let _ = writeln!(out, "lacked rights: {lacked}");
    }
    out
}
