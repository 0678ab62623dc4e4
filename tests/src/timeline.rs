//! The e2e's S2 as a picture: what a stale session costs over time without
//! and with arc-watchdog, drawn from one run's measurements (the README
//! shows it in place of a dashboard screenshot, which needs a real Grafana).
//!
//! [`Timeline`] is what one S2 run records (written by the e2e as JSON next
//! to its report); [`render_svg`] draws it as three panels over the same
//! time axis: session-create calls made (cumulative), the start gate's delay
//! as the watchdog reports it, and listener generations started
//! (cumulative). Plain SVG text, no fonts or plotting crate: the viewer
//! renders the labels, and the output is byte-for-byte reproducible, so a
//! committed picture can be checked against its committed data.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One S2 run: both legs over seconds since the stale session was planted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// ARC version the run used.
    pub arc_version: String,
    /// Lifetime of the stale session on GitHub's side, seconds.
    pub stale_lifetime_s: f64,
    /// The legs, in drawing order (without, then with arc-watchdog).
    pub legs: Vec<Leg>,
}

/// What one leg recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leg {
    /// `without` or `with` (arc-watchdog).
    pub label: String,
    /// When each session-create call was answered, and with what status,
    /// up to and including the first success.
    pub session_calls: Vec<Call>,
    /// When each listener process started.
    pub listener_starts: Vec<f64>,
    /// The start gate's remaining delay, sampled (empty without the
    /// watchdog).
    pub gate_delay: Vec<Sample>,
}

/// One session-create call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Seconds since the stale session was planted.
    pub at_s: f64,
    /// HTTP status answered (409 while the stale session lasts).
    pub status: u16,
}

/// One sample of a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the stale session was planted.
    pub at_s: f64,
    /// The value.
    pub value: f64,
}

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 150.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 64.0;
const GAP: f64 = 40.0;
const BOTTOM: f64 = 10.0;
/// Colours of the legs, in order: without (red), with (blue).
const COLOURS: [&str; 2] = ["#d62728", "#1f77b4"];

/// One panel: a title, a unit and a step series per leg.
struct Panel {
    title: &'static str,
    unit: &'static str,
    series: Vec<Vec<(f64, f64)>>,
}

/// A cumulative count as a step series from 0 at time 0: one step up per
/// event, held until `end`.
fn cumulative(times: impl IntoIterator<Item = f64>, end: f64) -> Vec<(f64, f64)> {
    let mut points = vec![(0.0, 0.0)];
    let mut n = 0.0;
    let mut times: Vec<f64> = times.into_iter().collect();
    times.sort_by(f64::total_cmp);
    for t in times {
        points.push((t, n));
        n += 1.0;
        points.push((t, n));
    }
    points.push((end, n));
    points
}

/// Samples as a step series: each value held until the next sample.
fn steps(samples: &[Sample]) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(samples.len() * 2);
    for (i, s) in samples.iter().enumerate() {
        if i > 0 {
            points.push((s.at_s, samples[i - 1].value));
        }
        points.push((s.at_s, s.value));
    }
    points
}

/// The time axis' end: the last thing recorded, and at least the lifetime.
fn end_of(t: &Timeline) -> f64 {
    t.legs
        .iter()
        .flat_map(|l| {
            l.session_calls
                .iter()
                .map(|c| c.at_s)
                .chain(l.listener_starts.iter().copied())
                .chain(l.gate_delay.iter().map(|s| s.at_s))
        })
        .fold(t.stale_lifetime_s, f64::max)
}

/// A round step for an axis spanning `0..=max` with about `ticks` ticks.
fn tick_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// Escapes text for an SVG text node.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws `t` as an SVG document.
pub fn render_svg(t: &Timeline) -> String {
    let end = end_of(t);
    let panels = [
        Panel {
            title: "session-create calls to GitHub (cumulative)",
            unit: "calls",
            series: t
                .legs
                .iter()
                .map(|l| cumulative(l.session_calls.iter().map(|c| c.at_s), end))
                .collect(),
        },
        Panel {
            title: "start gate: remaining delay of the next listener start",
            unit: "seconds",
            series: t.legs.iter().map(|l| steps(&l.gate_delay)).collect(),
        },
        Panel {
            title: "listener generations started (cumulative)",
            unit: "starts",
            series: t
                .legs
                .iter()
                .map(|l| cumulative(l.listener_starts.iter().copied(), end))
                .collect(),
        },
    ];
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + BOTTOM;
    let plot_width = WIDTH - LEFT - RIGHT;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{}</text>"##,
        escape(&format!(
            "A stale session that expires after {:.0} s (ARC {}, e2e S2)",
            t.stale_lifetime_s, t.arc_version
        ))
    );
    // Legend.
    for (i, leg) in t.legs.iter().enumerate() {
        let x = LEFT + i as f64 * 170.0;
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="34" x2="{}" y2="34" stroke="{colour}" stroke-width="2"/><text x="{}" y="38">{}</text>"##,
            x + 20.0,
            x + 25.0,
            escape(&format!("{} arc-watchdog", leg.label))
        );
    }
    let x_of = |s: f64| LEFT + s / end.max(f64::MIN_POSITIVE) * plot_width;
    let x_step = tick_step(end, 8.0);
    for (p, panel) in panels.iter().enumerate() {
        let top = TOP + p as f64 * (PANEL_HEIGHT + GAP);
        let bottom = top + PANEL_HEIGHT;
        let max = panel
            .series
            .iter()
            .flatten()
            .map(|(_, v)| *v)
            .fold(0.0, f64::max)
            .max(1.0);
        let y_step = tick_step(max, 4.0);
        let y_max = (max / y_step).ceil() * y_step;
        let y_of = |v: f64| bottom - v / y_max * PANEL_HEIGHT;
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"##,
            top - 6.0,
            escape(panel.title)
        );
        // Grid and y ticks.
        let mut v = 0.0;
        while v <= y_max + y_step / 2.0 {
            let y = y_of(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
                LEFT + plot_width,
                LEFT - 6.0,
                y + 4.0
            );
            v += y_step;
        }
        let _ = writeln!(
            svg,
            r##"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"##,
            top + PANEL_HEIGHT / 2.0,
            top + PANEL_HEIGHT / 2.0,
            panel.unit
        );
        // The stale session's expiry.
        let expiry = x_of(t.stale_lifetime_s);
        let _ = writeln!(
            svg,
            r##"<line x1="{expiry:.1}" y1="{top}" x2="{expiry:.1}" y2="{bottom}" stroke="#555555" stroke-dasharray="4 3"/>"##
        );
        if p == 0 {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" fill="#555555">stale session expires</text>"##,
                expiry + 4.0,
                top + PANEL_HEIGHT / 2.0
            );
        }
        // x axis and ticks.
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#000000"/>"##,
            LEFT + plot_width
        );
        let mut s = 0.0;
        while s <= end {
            let x = x_of(s);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="#000000"/><text x="{x:.1}" y="{}" text-anchor="middle">{s}</text>"##,
                bottom + 4.0,
                bottom + 15.0
            );
            s += x_step;
        }
        for (i, series) in panel.series.iter().enumerate() {
            if series.is_empty() {
                continue;
            }
            let points: Vec<String> = series
                .iter()
                .map(|(s, v)| format!("{:.1},{:.1}", x_of(*s), y_of(*v)))
                .collect();
            let _ = writeln!(
                svg,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"##,
                COLOURS[i % COLOURS.len()],
                points.join(" ")
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the stale session was left behind</text>"##,
        LEFT + plot_width / 2.0,
        height - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn timeline() -> Timeline {
        Timeline {
            arc_version: "0.14.2".to_owned(),
            stale_lifetime_s: 100.0,
            legs: vec![
                Leg {
                    label: "without".to_owned(),
                    session_calls: vec![
                        Call {
                            at_s: 3.0,
                            status: 409,
                        },
                        Call {
                            at_s: 40.0,
                            status: 409,
                        },
                        Call {
                            at_s: 103.0,
                            status: 200,
                        },
                    ],
                    listener_starts: vec![3.0, 40.0, 103.0],
                    gate_delay: vec![],
                },
                Leg {
                    label: "with".to_owned(),
                    session_calls: vec![
                        Call {
                            at_s: 4.0,
                            status: 409,
                        },
                        Call {
                            at_s: 120.0,
                            status: 200,
                        },
                    ],
                    listener_starts: vec![4.0, 120.0],
                    gate_delay: vec![
                        Sample {
                            at_s: 5.0,
                            value: 30.0,
                        },
                        Sample {
                            at_s: 6.0,
                            value: 29.0,
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn cumulative_counts_step_up_once_per_event_and_hold_to_the_end() {
        assert_eq!(
            cumulative([5.0, 2.0], 10.0),
            vec![
                (0.0, 0.0),
                (2.0, 0.0),
                (2.0, 1.0),
                (5.0, 1.0),
                (5.0, 2.0),
                (10.0, 2.0)
            ]
        );
        assert_eq!(cumulative([], 10.0), vec![(0.0, 0.0), (10.0, 0.0)]);
    }

    #[test]
    fn samples_hold_their_value_until_the_next() {
        let s = [
            Sample {
                at_s: 1.0,
                value: 30.0,
            },
            Sample {
                at_s: 2.0,
                value: 0.0,
            },
        ];
        assert_eq!(steps(&s), vec![(1.0, 30.0), (2.0, 30.0), (2.0, 0.0)]);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(120.0, 8.0), 20.0);
        assert_eq!(tick_step(700.0, 8.0), 100.0);
        assert_eq!(tick_step(3.0, 4.0), 1.0);
        assert_eq!(tick_step(35.0, 4.0), 10.0);
    }

    #[test]
    fn every_leg_is_a_line_in_each_panel_it_has_data_for_on_one_time_axis() {
        let svg = render_svg(&timeline());
        // Calls and starts for both legs, the gate only with the watchdog.
        assert_eq!(svg.matches("<polyline").count(), 5, "{svg}");
        assert_eq!(svg.matches(COLOURS[0]).count(), 2 + 1, "{svg}");
        assert_eq!(svg.matches(COLOURS[1]).count(), 3 + 1, "{svg}");
        // The axis ends at the last event (120 s), not the lifetime.
        assert!(svg.contains(">120</text>"), "{svg}");
        assert!(!svg.contains(">140</text>"), "{svg}");
        // The without leg's call line ends at 3 calls, at the right edge.
        let right = WIDTH - RIGHT;
        assert!(svg.contains(&format!("{right:.1},")), "{svg}");
        assert!(svg.contains("A stale session that expires after 100 s (ARC 0.14.2, e2e S2)"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }

    /// The README's picture is what its committed run's data draws, and
    /// that data is an S2 run as the e2e checks it: the stale session met,
    /// no session before it expired, fewer calls with arc-watchdog.
    /// `UPDATE_GOLDEN=1` redraws the SVG after a change to the drawing.
    #[test]
    fn the_readme_picture_is_drawn_from_its_committed_run() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let json = std::fs::read_to_string(docs.join("e2e-s2.timeline.json")).unwrap();
        let t: Timeline = serde_json::from_str(&json).unwrap();
        assert_eq!(t.legs.len(), 2);
        assert_eq!(
            (t.legs[0].label.as_str(), t.legs[1].label.as_str()),
            ("without", "with")
        );
        for leg in &t.legs {
            let (last, before) = leg.session_calls.split_last().unwrap();
            assert_eq!(last.status, 200, "{}: ends at its first session", leg.label);
            assert!(last.at_s >= t.stale_lifetime_s, "{}", leg.label);
            assert!(
                !before.is_empty() && before.iter().all(|c| c.status == 409),
                "{}",
                leg.label
            );
            assert!(!leg.listener_starts.is_empty(), "{}", leg.label);
        }
        assert!(t.legs[1].session_calls.len() < t.legs[0].session_calls.len());
        assert!(t.legs[0].gate_delay.is_empty() && !t.legs[1].gate_delay.is_empty());
        let svg_path = docs.join("e2e-s2.timeline.svg");
        let drawn = render_svg(&t);
        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
            std::fs::write(&svg_path, &drawn).unwrap();
        }
        assert!(
            std::fs::read_to_string(&svg_path).unwrap() == drawn,
            "docs/e2e-s2.timeline.svg is not what its data draws (UPDATE_GOLDEN=1 redraws it)"
        );
    }

    #[test]
    fn the_json_round_trips() {
        let t = timeline();
        let back: Timeline = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
