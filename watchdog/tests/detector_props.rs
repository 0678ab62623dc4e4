//! Property tests of the detector (proptest): random runs, lines, ends and
//! ticks, random thresholds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arc_watchdog::detector::{Decision, Detector, History, Input, Reason};
use arc_watchdog::parser::{EntryKey, FatalKind, ListenerEvent};
use arc_watchdog::settings::Thresholds;
use jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

#[derive(Debug, Clone, Copy)]
enum Ev {
    Conflict { fatal: bool },
    Established,
    Fatal(u8),
    Other,
}

impl Ev {
    fn event(self) -> ListenerEvent {
        match self {
            Ev::Conflict { fatal } => ListenerEvent::SessionConflict { fatal },
            Ev::Established => ListenerEvent::SessionEstablished,
            Ev::Fatal(k) => ListenerEvent::Fatal(match k % 5 {
                0 => FatalKind::NotFound,
                1 => FatalKind::Auth,
                2 => FatalKind::RateLimited,
                3 => FatalKind::Network,
                _ => FatalKind::Other,
            }),
            Ev::Other => ListenerEvent::Other,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Start { in_place: bool },
    Line(Ev),
    End { code: i32, lives_on: bool },
    Tick,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => any::<bool>().prop_map(|fatal| Ev::Conflict { fatal }),
        1 => Just(Ev::Established),
        2 => any::<u8>().prop_map(Ev::Fatal),
        3 => Just(Ev::Other),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(|in_place| Op::Start { in_place }),
        5 => ev().prop_map(Op::Line),
        2 => (prop_oneof![Just(0), Just(1), Just(137)], any::<bool>())
            .prop_map(|(code, lives_on)| Op::End { code, lives_on }),
        1 => Just(Op::Tick),
    ]
}

fn thresholds() -> impl Strategy<Value = Thresholds> {
    (
        1u32..6,
        30u64..1200,
        1u64..60,
        1u64..32,
        1u32..4,
        0u32..5,
        60u64..7200,
        prop::option::of(10u64..600),
        prop_oneof![Just(0u64), 1u64..900],
        60u64..1200,
    )
        .prop_map(
            |(n, window, initial, factor, caps, budget, ewindow, hung, steady, established)| {
                Thresholds {
                    conflict_threshold: n,
                    conflict_window: Duration::from_secs(window),
                    backoff_initial: Duration::from_secs(initial),
                    backoff_steady_for: Duration::from_secs(steady),
                    backoff_max: Duration::from_secs(initial * factor),
                    duplicate_after_caps: caps,
                    eviction_budget: budget,
                    eviction_window: Duration::from_secs(ewindow),
                    established_after: Duration::from_secs(established),
                    hung_after: hung.map(Duration::from_secs),
                    dry_run: false,
                }
            },
        )
}

fn script() -> impl Strategy<Value = Vec<(u64, Op)>> {
    prop::collection::vec((0u64..240, op()), 1..250)
}

fn origin() -> Timestamp {
    "2026-03-02T04:00:00Z".parse().unwrap()
}

fn plus(t: Timestamp, secs: u64) -> Timestamp {
    t.saturating_add(Duration::from_secs(secs)).unwrap()
}

/// Feeds a script; returns every decision and the inputs fed.
fn play(d: &mut Detector, script: &[(u64, Op)]) -> (Vec<Decision>, Vec<Input>) {
    let mut now = origin();
    let mut run = 0u64;
    let mut line = 0u64;
    let mut out = Vec::new();
    let mut inputs = Vec::new();
    for (dt, op) in script {
        now = plus(now, *dt);
        let input = match *op {
            Op::Start { in_place } => {
                run += 1;
                Input::RunStarted {
                    at: now,
                    run_id: format!("r{run}"),
                    in_place,
                }
            }
            Op::Line(ev) => {
                line += 1;
                Input::Entry {
                    at: now,
                    event: ev.event(),
                    key: Some(EntryKey {
                        at: now,
                        hash: line,
                    }),
                }
            }
            Op::End { code, lives_on } => Input::RunEnded {
                at: now,
                exit_code: Some(code),
                pod_lives_on: lives_on,
            },
            Op::Tick => Input::Tick { at: now },
        };
        inputs.push(input.clone());
        out.extend(d.handle(input));
    }
    (out, inputs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A conflict loop is never reported with fewer than N session-conflict
    /// lines within the window since the last established session.
    #[test]
    fn never_a_loop_with_fewer_than_n_conflicts(t in thresholds(), script in script()) {
        let mut d = Detector::new(t.clone());
        let mut now = origin();
        let mut streak: Vec<Timestamp> = Vec::new();
        for (dt, op) in &script {
            now = plus(now, *dt);
            if let Op::Line(Ev::Established) = op {
                streak.clear();
            }
            if let Op::Line(Ev::Conflict { .. }) = op {
                streak.push(now);
            }
            let (out, _) = {
                let input = match *op {
                    Op::Start { in_place } => Input::RunStarted { at: now, run_id: format!("{now}"), in_place },
                    Op::Line(ev) => Input::Entry { at: now, event: ev.event(), key: None },
                    Op::End { code, lives_on } => Input::RunEnded { at: now, exit_code: Some(code), pod_lives_on: lives_on },
                    Op::Tick => Input::Tick { at: now },
                };
                (d.handle(input), ())
            };
            for dec in &out {
                if dec.reason() == Reason::ConflictLoopDetected {
                    let from = now.saturating_sub(t.conflict_window).unwrap();
                    let within = streak.iter().filter(|c| **c > from).count();
                    prop_assert!(
                        within >= t.conflict_threshold as usize,
                        "loop at {now} with {within} conflicts in the window (threshold {})",
                        t.conflict_threshold
                    );
                }
                if dec.reason() == Reason::CrashLoopDetected {
                    prop_assert!(d.history().failed_starts.len() >= t.conflict_threshold as usize);
                }
            }
        }
    }

    /// No window of `eviction_window` ever holds more evictions than the budget.
    #[test]
    fn never_more_evictions_than_the_budget(t in thresholds(), script in script()) {
        let mut d = Detector::new(t.clone());
        let (out, _) = play(&mut d, &script);
        let evictions: Vec<Timestamp> = out
            .iter()
            .filter_map(|d| match d {
                Decision::Evict { at, .. } => Some(*at),
                _ => None,
            })
            .collect();
        for (i, e) in evictions.iter().enumerate() {
            let from = e.saturating_sub(t.eviction_window).unwrap();
            let n = evictions[..=i].iter().filter(|x| **x > from).count();
            prop_assert!(n <= t.eviction_budget as usize, "{n} evictions within the window ending {e}");
        }
    }

    /// Replaying lines (a log stream resumed after a reconnect) changes
    /// nothing: no decision, no history.
    #[test]
    fn the_same_line_twice_never_counts_twice(
        t in thresholds(),
        script in script(),
        replays in prop::collection::vec((0usize..250, 1usize..20), 0..30),
    ) {
        let mut once = Detector::new(t.clone());
        let (want, inputs) = play(&mut once, &script);

        let mut twice = Detector::new(t);
        let mut got = Vec::new();
        // Lines of the current run fed so far, for replaying.
        let mut run_lines: Vec<Input> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            if matches!(input, Input::RunStarted { .. }) {
                run_lines.clear();
            }
            got.extend(twice.handle(input.clone()));
            if let Input::Entry { .. } = input {
                run_lines.push(input.clone());
            }
            for (at, len) in &replays {
                if *at == i && !run_lines.is_empty() {
                    let start = run_lines.len().saturating_sub(*len);
                    for again in run_lines[start..].iter().cloned() {
                        let more = twice.handle(again);
                        prop_assert!(more.is_empty(), "a replayed line decided {more:?}");
                    }
                }
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(twice.history(), once.history());
    }

    /// Storing the history (JSON, as in the Lease) and continuing in a new
    /// detector, as every pod generation does, decides exactly the same.
    #[test]
    fn history_round_trip_changes_nothing(t in thresholds(), script in script(), cut in 0usize..250) {
        let mut whole = Detector::new(t.clone());
        let (want, inputs) = play(&mut whole, &script);
        let cut = cut.min(inputs.len());
        let mut first = Detector::new(t.clone());
        let mut got: Vec<Decision> = Vec::new();
        for input in &inputs[..cut] {
            got.extend(first.handle(input.clone()));
        }
        let json = first.history().to_json();
        let mut second = Detector::from_history(t, History::from_json(&json).unwrap());
        for input in &inputs[cut..] {
            got.extend(second.handle(input.clone()));
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(second.history(), whole.history());
    }
}

/// One pod generation (ARC >= 0.9.3: one run per pod), all of it at one
/// time: start, at most one line, end. `None`: time passes only (a tick).
#[derive(Debug, Clone, Copy)]
enum Gen {
    Conflict,
    Fatal(u8),
    Established,
    Other,
    Silent(i32),
    Tick,
}

fn generation() -> impl Strategy<Value = Gen> {
    prop_oneof![
        5 => Just(Gen::Conflict),
        2 => any::<u8>().prop_map(Gen::Fatal),
        1 => Just(Gen::Established),
        1 => Just(Gen::Other),
        1 => prop_oneof![Just(0), Just(137)].prop_map(Gen::Silent),
        1 => Just(Gen::Tick),
    ]
}

/// Inputs of generations `gens` (gaps in seconds, at least 1), numbered
/// from `first`, starting after `origin()`; returns them and the last time.
fn generations(gens: &[(u64, Gen)]) -> Vec<Vec<Input>> {
    let mut now = origin();
    let mut out = Vec::new();
    for (i, (dt, g)) in gens.iter().enumerate() {
        now = plus(now, *dt);
        if let Gen::Tick = g {
            out.push(vec![Input::Tick { at: now }]);
            continue;
        }
        let mut inputs = vec![Input::RunStarted {
            at: now,
            run_id: format!("g{i}"),
            in_place: false,
        }];
        let (line, code) = match *g {
            Gen::Conflict => (Some(Ev::Conflict { fatal: true }), 1),
            Gen::Fatal(k) => (Some(Ev::Fatal(k)), 1),
            Gen::Established => (Some(Ev::Established), 0),
            Gen::Other => (Some(Ev::Other), 0),
            Gen::Silent(code) => (None, code),
            Gen::Tick => (None, 0),
        };
        if let Some(ev) = line {
            inputs.push(Input::Entry {
                at: now,
                event: ev.event(),
                key: Some(EntryKey {
                    at: now,
                    hash: i as u64,
                }),
            });
        }
        inputs.push(Input::RunEnded {
            at: now,
            exit_code: Some(code),
            pod_lives_on: false,
        });
        out.push(inputs);
    }
    out
}

/// One case of [`merging_then_evaluating_equals_seeing_in_order`]: the
/// thresholds, the generations the stored history saw and those seen while
/// the Lease could not be read.
type MergeCase = (Thresholds, Vec<(u64, Gen)>, Vec<(u64, Gen)>);

fn merge_case() -> impl Strategy<Value = MergeCase> {
    (
        thresholds(),
        prop::collection::vec(
            (prop_oneof![3 => 1u64..60, 1 => 60u64..600], generation()),
            0..30,
        ),
        // Seen while the Lease could not be read: a few generations.
        prop::collection::vec((1u64..30, generation()), 1..5),
    )
}

/// Checks one merge case; `Ok(true)` when the merge made a loop that
/// neither side had on its own (the case the merge exists for).
fn check_merge((t, before, after): MergeCase) -> Result<bool, TestCaseError> {
    let t = Thresholds {
        hung_after: None,
        ..t
    };
    let cut = before.len();
    let gens = generations(&[before, after].concat());
    let feed = |d: &mut Detector, gens: &[Vec<Input>]| {
        let mut out = Vec::new();
        for input in gens.iter().flatten() {
            out.extend(d.handle(input.clone()));
        }
        out
    };
    let mut whole = Detector::new(t.clone());
    feed(&mut whole, &gens);
    let mut stored = Detector::new(t.clone());
    feed(&mut stored, &gens[..cut]);
    let mut ours = Detector::new(t.clone());
    feed(&mut ours, &gens[cut..]);
    // A loop on either side is continued by the merge as it is.
    prop_assume!(stored.history().loop_state.is_none() && ours.history().loop_state.is_none());
    let now = gens.iter().flatten().last().map(Input::at).unwrap();
    let ours_from = gens[cut..].iter().flatten().next().map_or(now, Input::at);
    // From the conflict window on, ours would have pruned evidence of its
    // own that made the loop (a Lease read that late): a conflict exactly
    // the window old is out of it already.
    prop_assume!(now.duration_since(ours_from).unsigned_abs() < t.conflict_window);
    let merged = History::merge(stored.history(), ours.history());
    let mut d = Detector::from_history(t.clone(), merged);
    let out = d.evaluate(now);
    prop_assert_eq!(d.history(), whole.history());
    prop_assert!(out.iter().all(|x| x.reason() != Reason::SessionConflict));
    let loops = out
        .iter()
        .filter(|x| {
            matches!(
                x.reason(),
                Reason::ConflictLoopDetected | Reason::CrashLoopDetected
            )
        })
        .count();
    let merged_loop = whole.history().loop_state.is_some();
    prop_assert_eq!(loops, usize::from(merged_loop));
    prop_assert!(d.evaluate(now).is_empty());
    Ok(merged_loop)
}

/// At the window's edge: ours saw conflicts 2 s, 23 s and 34 s in, the
/// stored history one at 1 s; a window of 32 s. Seen in order they make a
/// loop at 23 s, but at 34 s ours has pruned its conflict of 2 s (exactly
/// the window old), so no merge can rebuild that loop: not a case the
/// property speaks about.
#[test]
fn a_lease_read_a_whole_window_late_is_not_a_merge_case() {
    let t = Thresholds {
        conflict_threshold: 3,
        conflict_window: Duration::from_secs(32),
        backoff_initial: Duration::from_secs(1),
        backoff_steady_for: Duration::ZERO,
        backoff_max: Duration::from_secs(1),
        ..Thresholds::default()
    };
    let before = vec![(1, Gen::Conflict)];
    let after = vec![(1, Gen::Conflict), (21, Gen::Conflict), (11, Gen::Conflict)];
    let checked = check_merge((t, before, after));
    assert!(
        matches!(checked, Err(TestCaseError::Reject(_))),
        "{checked:?}"
    );
}

/// Cases of [`merging_then_evaluating_equals_seeing_in_order`] run.
const MERGE_CASES: u32 = 1024;
/// Of those, how many at least must make a loop neither side had alone:
/// without them the test checks only that nothing comes from nothing.
/// The generator makes about a quarter of them (some 250, give or take
/// 15); fewer than 100 means it no longer produces the case.
const MIN_MERGED_LOOPS: u32 = 100;

/// Pod generations before `cut` were seen by earlier watchdogs (the
/// stored history), those after by one that could not read it in time.
/// When neither side had a loop on its own, merging the two histories
/// and evaluating gives the history of having seen every generation in
/// order: the same loop (start, backoff, escalations) and the same
/// counts, nothing counted twice; evaluating again decides nothing, and
/// no conflict is reported again. Run by hand (not `proptest!`) to count,
/// over the whole run, the cases where the merge made the loop.
#[test]
fn merging_then_evaluating_equals_seeing_in_order() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: MERGE_CASES,
        max_global_rejects: 100 * MERGE_CASES,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    let merged_loops = AtomicU32::new(0);
    let result = runner.run(&merge_case(), |case| {
        if check_merge(case)? {
            merged_loops.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
    let merged_loops = merged_loops.into_inner();
    eprintln!("{merged_loops} of {MERGE_CASES} cases made a loop only the merge had\n{runner}");
    assert!(
        merged_loops >= MIN_MERGED_LOOPS,
        "only {merged_loops} of {MERGE_CASES} cases made a loop only the merge had"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Evaluating a merged history never counts anything again and never
    /// evicts beyond the budget, counting the evictions both sides stored
    /// (here: the listener restarted in place after the generations, while
    /// the merged loop's backoff may still run).
    #[test]
    fn evaluating_counts_nothing_and_keeps_the_budget(
        t in thresholds(),
        gens in prop::collection::vec((1u64..60, generation()), 1..20),
        cut in 0usize..20,
        restart_after in 0u64..60,
        stored_evictions in prop::collection::vec(0u64..7200, 0..5),
    ) {
        let t = Thresholds { hung_after: None, ..t };
        let gens = generations(&gens);
        let cut = cut.min(gens.len());
        let end = gens.iter().flatten().last().map(Input::at).unwrap();
        let now = plus(end, restart_after);
        let mut first = Detector::new(t.clone());
        for input in gens[..cut].iter().flatten() {
            first.handle(input.clone());
        }
        let mut stored = first.history().clone();
        stored.evictions.extend(
            stored_evictions
                .iter()
                .map(|ago| now.saturating_sub(Duration::from_secs(*ago)).unwrap()),
        );
        stored.evictions.sort();
        let mut part = Detector::new(t.clone());
        for input in gens[cut..].iter().flatten() {
            part.handle(input.clone());
        }
        part.handle(Input::RunStarted { at: now, run_id: "restarted".to_owned(), in_place: true });
        let merged = History::merge(&stored, part.history());
        let mut d = Detector::from_history(t.clone(), merged.clone());
        let out = d.evaluate(now);
        let h = d.history();
        prop_assert!(h.conflicts.iter().all(|c| merged.conflicts.contains(c)));
        prop_assert!(h.failed_starts.iter().all(|f| merged.failed_starts.contains(f)));
        prop_assert!(out.iter().all(|x| x.reason() != Reason::SessionConflict));
        let evicts = out.iter().filter(|x| matches!(x, Decision::Evict { .. })).count();
        prop_assert!(evicts <= 1);
        let from = now.saturating_sub(t.eviction_window).unwrap();
        let before = merged.evictions.iter().filter(|e| **e > from).count();
        if evicts == 1 {
            prop_assert!(before < t.eviction_budget as usize, "{before} evictions before, budget {}", t.eviction_budget);
        }
        prop_assert!(h.evictions.len() <= before + evicts);
        prop_assert!(d.evaluate(now).is_empty());
    }
}

proptest! {
    /// Whatever a Lease held (another node's clock, an older `--backoff-max`,
    /// an edit), a loaded history holds the start gate for at most
    /// `--backoff-max` from now; deadlines already within that stay as they
    /// were.
    #[test]
    fn stored_deadlines_are_clamped_to_backoff_max_from_now(
        not_before_s in -100_000i64..10_000_000,
        pending_s in proptest::option::of(-100_000i64..10_000_000),
        delay_ms in 0u64..u64::MAX / 2,
        max_s in 1u64..100_000,
    ) {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s: i64| now + jiff::SignedDuration::from_secs(s);
        let mut h = History {
            loop_state: Some(arc_watchdog::detector::LoopState {
                since: now,
                cause: arc_watchdog::detector::Cause::SessionConflict,
                conflict_loop: true,
                crash_loop: false,
                delay_ms,
                not_before: at(not_before_s),
                last_failure: now,
                times_at_cap: 0,
                waited_ms: 0,
                duplicate_suspected: false,
            }),
            pending_eviction: pending_s.map(|s| arc_watchdog::detector::PendingEviction {
                at: at(s),
                cause: arc_watchdog::detector::EvictCause::ListenerDead,
            }),
            ..History::default()
        };
        let before = h.clone();
        let max = Duration::from_secs(max_s);
        let changed = h.clamp_deadlines(now, max);
        let latest = at(i64::try_from(max_s).unwrap());
        let l = h.loop_state.unwrap();
        prop_assert!(l.not_before <= latest);
        prop_assert!(l.delay_ms <= max_s * 1000);
        prop_assert_eq!(l.not_before, before.loop_state.unwrap().not_before.min(latest));
        if let Some(p) = h.pending_eviction {
            prop_assert!(p.at <= latest);
        }
        prop_assert_eq!(changed, h != before);
        // A second clamp changes nothing.
        prop_assert!(!h.clone().clamp_deadlines(now, max));
        // And the start gate of a detector loaded from it opens by then.
        let t = Thresholds { backoff_max: max, ..Thresholds::default() };
        let d = Detector::from_history(t, h);
        prop_assert_eq!(d.start_gate(latest), arc_watchdog::detector::StartGate::Open);
    }
}
