//! Detector rules, one test (or more) per rule, with an injected clock.
//! (One concern over 800 lines: the rules of one state machine, each test
//! short and driven by the same simulated listener.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use arc_watchdog::detector::{
    Cause, Decision, Detector, EvictCause, FailedStart, History, Input, Reason, StartGate,
    duplicate_suspected_after,
};
use arc_watchdog::parser::{EntryKey, FatalKind, ListenerEvent};
use arc_watchdog::settings::Thresholds;
use jiff::Timestamp;

const CONFLICT: ListenerEvent = ListenerEvent::SessionConflict { fatal: true };

/// A detector driven by a fake clock (seconds from a fixed origin).
struct Sim {
    d: Detector,
    now: Timestamp,
    run: u32,
    log: Vec<Decision>,
}

fn t0() -> Timestamp {
    "2026-03-02T04:00:00Z".parse().unwrap()
}

impl Sim {
    fn new(t: Thresholds) -> Self {
        Self {
            d: Detector::new(t),
            now: t0(),
            run: 0,
            log: Vec::new(),
        }
    }

    fn advance(&mut self, secs: u64) -> Vec<Decision> {
        self.now = self.now.saturating_add(Duration::from_secs(secs)).unwrap();
        self.feed(Input::Tick { at: self.now })
    }

    fn feed(&mut self, input: Input) -> Vec<Decision> {
        let out = self.d.handle(input);
        self.log.extend(out.iter().cloned());
        out
    }

    fn start(&mut self, in_place: bool) -> Vec<Decision> {
        self.run += 1;
        self.feed(Input::RunStarted {
            at: self.now,
            run_id: format!("c{}", self.run),
            in_place,
        })
    }

    fn line(&mut self, event: ListenerEvent) -> Vec<Decision> {
        self.feed(Input::Entry {
            at: self.now,
            event,
            key: None,
        })
    }

    fn end(&mut self, exit_code: i32, pod_lives_on: bool) -> Vec<Decision> {
        self.feed(Input::RunEnded {
            at: self.now,
            exit_code: Some(exit_code),
            pod_lives_on,
        })
    }

    /// Three generations that met a session conflict, under the default
    /// thresholds: a conflict loop, its backoff running.
    fn in_a_conflict_loop() -> Self {
        let mut s = Self::new(Thresholds::default());
        for _ in 0..3 {
            s.failing_generation(CONFLICT);
        }
        s
    }

    /// One pod generation of ARC >= 0.9.3: start, fatal line, exit 1.
    fn failing_generation(&mut self, event: ListenerEvent) -> Vec<Decision> {
        let mut out = self.start(false);
        self.advance(1);
        out.extend(self.line(event));
        out.extend(self.end(1, false));
        out
    }

    /// Waits until the start gate opens (what the kubelet's startupProbe does).
    fn wait_gate(&mut self) {
        if let StartGate::Closed { until } = self.d.start_gate(self.now) {
            let secs = until.duration_since(self.now).as_secs().max(0) as u64;
            self.advance(secs);
        }
        assert_eq!(self.d.start_gate(self.now), StartGate::Open);
    }

    fn reasons(&self) -> Vec<Reason> {
        self.log.iter().map(Decision::reason).collect()
    }
}

fn reasons(ds: &[Decision]) -> Vec<Reason> {
    ds.iter().map(Decision::reason).collect()
}

fn count(ds: &[Decision], r: Reason) -> usize {
    ds.iter().filter(|d| d.reason() == r).count()
}

/// Whether `out` is one decision: evicting a dead listener.
fn only_a_dead_listener_eviction(out: &[Decision]) -> bool {
    matches!(
        out,
        [Decision::Evict {
            cause: EvictCause::ListenerDead,
            ..
        }]
    )
}

/// The default thresholds with a delay that doubles from the first
/// served one (no steady phase): what the tests of doubling, the cap and
/// the duplicate suspicion are about.
fn doubling() -> Thresholds {
    Thresholds {
        backoff_steady_for: Duration::ZERO,
        ..Thresholds::default()
    }
}

#[test]
fn a_young_loop_keeps_the_steady_delay_then_doubles() {
    // Defaults: 30 s while the loop is younger than 5 minutes, then
    // doubling. Each generation fails as soon as its delay is over.
    let mut s = Sim::in_a_conflict_loop();
    let loop_at = s.now;
    let mut delays = Vec::new();
    for _ in 0..14 {
        s.wait_gate();
        let at = s.now;
        for d in s.failing_generation(CONFLICT) {
            if let Decision::DelayStart { delay_ms, .. } = d {
                delays.push((at.duration_since(loop_at).as_secs(), delay_ms / 1000));
            }
        }
    }
    let young: Vec<u64> = delays
        .iter()
        .filter(|(age, _)| *age < 300)
        .map(|(_, d)| *d)
        .collect();
    let old: Vec<u64> = delays
        .iter()
        .filter(|(age, _)| *age >= 300)
        .map(|(_, d)| *d)
        .collect();
    assert!(
        young.len() >= 8,
        "a delay every ~30 s for 5 minutes: {delays:?}"
    );
    assert!(young.iter().all(|d| *d == 30), "{delays:?}");
    assert_eq!(&old[..4], &[60, 120, 240, 480], "{delays:?}");
}

#[test]
fn conflict_loop_needs_threshold_conflicts() {
    let mut s = Sim::new(Thresholds::default());
    assert_eq!(
        reasons(&s.failing_generation(CONFLICT)),
        vec![Reason::SessionConflict]
    );
    s.advance(5);
    assert_eq!(
        reasons(&s.failing_generation(CONFLICT)),
        vec![Reason::SessionConflict]
    );
    assert_eq!(s.d.start_gate(s.now), StartGate::Open);
    s.advance(5);
    let out = s.failing_generation(CONFLICT);
    assert_eq!(
        reasons(&out),
        vec![
            Reason::SessionConflict,
            Reason::ConflictLoopDetected,
            Reason::ListenerStartDelayed
        ]
    );
    let Decision::DelayStart {
        until, delay_ms, ..
    } = out[2].clone()
    else {
        panic!("{out:?}")
    };
    assert_eq!(delay_ms, 30_000);
    assert_eq!(s.d.start_gate(s.now), StartGate::Closed { until });
    assert!(s.d.status().loop_active);
    assert_eq!(s.d.status().loop_cause, Some(Cause::SessionConflict));
    assert_eq!(s.d.next_wakeup(), Some(until));
    // At the backoff's end the gate opens and the end is no wake-up any
    // more: one at the clock's own instant would have the sidecar tick
    // again at once, without end.
    s.wait_gate();
    assert_eq!(s.now, until);
    assert!(s.d.status().loop_active);
    assert!(
        s.d.next_wakeup().is_none_or(|t| t > s.now),
        "{:?} at {}",
        s.d.next_wakeup(),
        s.now
    );
}

#[test]
fn conflicts_outside_the_window_do_not_make_a_loop() {
    let mut s = Sim::new(Thresholds::default());
    for _ in 0..6 {
        s.failing_generation(CONFLICT);
        s.advance(6 * 60); // 2 conflicts never fit in 10 minutes... 3 never do
    }
    assert!(!s.reasons().contains(&Reason::ConflictLoopDetected));
    assert!(!s.reasons().contains(&Reason::CrashLoopDetected));
}

#[test]
fn an_established_session_ends_the_streak() {
    let mut s = Sim::new(Thresholds::default());
    s.failing_generation(CONFLICT);
    s.failing_generation(CONFLICT);
    // This run gets its session, then dies later (not a start-up failure).
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    s.advance(10);
    s.line(ListenerEvent::Fatal(FatalKind::Network));
    s.end(1, false);
    s.failing_generation(CONFLICT);
    s.failing_generation(CONFLICT);
    assert!(!s.reasons().contains(&Reason::ConflictLoopDetected));
    s.failing_generation(CONFLICT);
    assert!(s.reasons().contains(&Reason::ConflictLoopDetected));
}

#[test]
fn backoff_doubles_caps_and_recovery_resets() {
    let mut s = Sim::new(doubling());
    for _ in 0..3 {
        s.failing_generation(CONFLICT);
    }
    let mut delays = Vec::new();
    for _ in 0..7 {
        s.wait_gate();
        let out = s.failing_generation(CONFLICT);
        for d in &out {
            if let Decision::DelayStart { delay_ms, .. } = d {
                delays.push(delay_ms / 1000);
            }
        }
    }
    assert_eq!(delays, vec![60, 120, 240, 480, 600, 600, 600]);
    s.wait_gate();
    s.start(false);
    let out = s.line(ListenerEvent::SessionEstablished);
    assert_eq!(reasons(&out), vec![Reason::ListenerRecovered]);
    assert!(!s.d.status().loop_active);
    assert_eq!(s.d.start_gate(s.now), StartGate::Open);
    assert!(s.d.history().conflicts.is_empty());
}

#[test]
fn failures_before_the_delay_was_served_do_not_escalate() {
    // Classic mode on ARC >= 0.9.3, or the gate failed open: the loop goes on
    // at ARC's pace (a failure every 6 s here). Failures that came before the
    // delay was over say nothing about waiting: the delay doubles once per
    // served delay, not once per failure.
    let mut s = Sim::new(doubling());
    for _ in 0..20 {
        s.failing_generation(CONFLICT);
        s.advance(5);
    }
    // Conflicts at 1, 7, 13 (loop, 30 s: until 43), ..., 43 (60 s: until
    // 103), ..., 103 (120 s: until 223), ..., 115.
    assert_eq!(s.d.status().current_delay, Some(Duration::from_secs(120)));
    assert_eq!(count(&s.log, Reason::ListenerStartDelayed), 3);
    assert!(!s.reasons().contains(&Reason::DuplicateScaleSetSuspected));
}

#[test]
fn a_start_that_waited_counts_as_served_despite_whole_second_stamps() {
    // Seen against the real ARC 0.14.2: the new pod's listener starts just
    // after the delay, but its container start time and its fatal log line
    // carry whole seconds, so they read up to a second *before* the end of
    // the delay. That failure must still double the delay; otherwise every
    // later generation starts after the same short delay, forever.
    let mut s = Sim::new(doubling());
    let mut until = None;
    for _ in 0..3 {
        for d in s.failing_generation(CONFLICT) {
            if let Decision::DelayStart { until: u, .. } = d {
                until = Some(u);
            }
        }
    }
    let until = until.expect("the third conflict starts the loop");
    assert_eq!(s.d.status().current_delay, Some(Duration::from_secs(30)));
    let stamped = |ms: u64| until.checked_sub(Duration::from_millis(ms)).unwrap();
    s.feed(Input::RunStarted {
        at: stamped(900),
        run_id: "after-the-delay".to_owned(),
        in_place: false,
    });
    let out = s.feed(Input::Entry {
        at: stamped(800),
        event: CONFLICT,
        key: None,
    });
    assert!(
        out.iter().any(|d| matches!(
            d,
            Decision::DelayStart {
                delay_ms: 60_000,
                ..
            }
        )),
        "{out:?}"
    );
    assert_eq!(s.d.status().current_delay, Some(Duration::from_secs(60)));
}

#[test]
fn crash_loop_any_cause_names_the_cause() {
    for (kind, cause, hint) in [
        (FatalKind::Auth, Cause::Auth, "never heals"),
        (FatalKind::NotFound, Cause::NotFound, "re-register"),
        (FatalKind::RateLimited, Cause::RateLimited, "makes it worse"),
        (FatalKind::Network, Cause::Network, "transient"),
    ] {
        let mut s = Sim::new(Thresholds::default());
        s.failing_generation(ListenerEvent::Fatal(kind));
        s.failing_generation(ListenerEvent::Fatal(kind));
        let out = s.failing_generation(ListenerEvent::Fatal(kind));
        assert_eq!(
            reasons(&out),
            vec![Reason::CrashLoopDetected, Reason::ListenerStartDelayed],
            "{kind:?}"
        );
        assert!(
            out[0].message().contains(cause.as_str()),
            "{}",
            out[0].message()
        );
        assert!(out[0].message().contains(hint), "{}", out[0].message());
        assert_eq!(s.d.status().loop_cause, Some(cause));
    }
}

#[test]
fn crash_loop_counts_mixed_causes_and_silent_deaths() {
    let mut s = Sim::new(Thresholds::default());
    s.failing_generation(ListenerEvent::Fatal(FatalKind::Network));
    // Killed without an error line.
    s.start(false);
    s.advance(1);
    s.end(137, false);
    // A clean exit without a session is not a crash.
    s.start(false);
    s.end(0, false);
    assert!(!s.reasons().contains(&Reason::CrashLoopDetected));
    let out = s.failing_generation(ListenerEvent::Fatal(FatalKind::Auth));
    assert_eq!(out[0].reason(), Reason::CrashLoopDetected);
    assert!(out[0].message().contains("network, unknown, auth"));
}

#[test]
fn dead_listener_with_live_pod_is_evicted_at_once() {
    let mut s = Sim::new(Thresholds::default());
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    s.advance(3600);
    let out = s.end(2, true);
    assert!(only_a_dead_listener_eviction(&out), "{out:?}");
    assert_eq!(s.d.status().evictions_in_window, 1);
}

#[test]
fn an_eviction_not_accepted_is_withdrawn_once() {
    let mut s = Sim::new(Thresholds::default());
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    s.advance(60);
    let out = s.end(2, true);
    let at = out.first().expect("an eviction").at();
    assert_eq!(at, s.now, "the decision carries its time");
    let settled = |d: &mut Detector, at, accepted| {
        let before = d.status().evictions_in_window;
        assert!(d.handle(Input::EvictionSettled { at, accepted }).is_empty());
        before - d.status().evictions_in_window == 1
    };
    let other = at.checked_add(jiff::SignedDuration::from_secs(1)).unwrap();
    assert!(!settled(&mut s.d, other, false));
    assert_eq!(s.d.status().evictions_in_window, 1);
    assert!(
        s.d.history_to_store().evictions.is_empty(),
        "not stored while unsettled"
    );
    assert!(settled(&mut s.d, at, false));
    assert_eq!(s.d.status().evictions_in_window, 0);
    assert!(!settled(&mut s.d, at, false), "nothing left to withdraw");
}

#[test]
fn an_accepted_eviction_stays_counted_and_is_stored() {
    let t = Thresholds {
        eviction_budget: 1,
        ..Thresholds::default()
    };
    let mut s = Sim::new(t);
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    s.advance(60);
    let at = s.end(2, true).first().expect("an eviction").at();
    // While it is unsettled, a second decision does not pass the budget.
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    s.advance(60);
    assert_eq!(
        reasons(&s.end(2, true)),
        vec![Reason::EvictionBudgetExhausted]
    );
    assert!(s.d.history_to_store().evictions.is_empty());
    s.d.handle(Input::EvictionSettled { at, accepted: true });
    assert_eq!(s.d.status().evictions_in_window, 1);
    assert_eq!(s.d.history_to_store().evictions, vec![at]);
    // Settled once: a late second answer changes nothing.
    s.d.handle(Input::EvictionSettled {
        at,
        accepted: false,
    });
    assert_eq!(s.d.history_to_store().evictions, vec![at]);
}

#[test]
fn an_unsettled_eviction_survives_a_merge_unstored() {
    let mut s = Sim::new(Thresholds::default());
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    s.advance(60);
    let at = s.end(2, true).first().expect("an eviction").at();
    let stored = History {
        evictions: vec![t0()],
        ..History::default()
    };
    s.d.merge(&stored);
    assert_eq!(s.d.status().evictions_in_window, 2);
    assert_eq!(s.d.history_to_store().evictions, vec![t0()]);
    s.d.handle(Input::EvictionSettled {
        at,
        accepted: false,
    });
    assert_eq!(s.d.history().evictions, vec![t0()]);
}

#[test]
fn every_event_reason_is_named_as_documented() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for r in Reason::ALL {
        assert_eq!(r.as_str(), format!("{r:?}"));
        assert!(
            readme.contains(&format!("`{}`", r.as_str())),
            "README lacks {r:?}"
        );
    }
    // Only progress reports are Normal Events; everything else asks for a look.
    let normal: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| !r.is_warning())
        .collect();
    assert_eq!(
        normal,
        [
            Reason::ListenerStartDelayed,
            Reason::ListenerRecovered,
            Reason::DryRunStartDelay
        ]
    );
}

#[test]
fn eviction_causes_are_snake_case_metric_labels() {
    for (cause, label) in [
        (EvictCause::ListenerDead, "listener_dead"),
        (
            EvictCause::RestartedDuringBackoff,
            "restarted_during_backoff",
        ),
        (EvictCause::Hung, "hung"),
    ] {
        assert_eq!(cause.as_str(), label);
    }
}

#[test]
fn dead_listener_during_backoff_is_evicted_when_it_ends() {
    let mut s = Sim::new(Thresholds::default());
    s.failing_generation(CONFLICT);
    s.failing_generation(CONFLICT);
    s.start(false);
    s.line(CONFLICT);
    let out = s.end(1, true);
    assert_eq!(reasons(&out), vec![Reason::ListenerDead]);
    let wake = s.d.next_wakeup().unwrap();
    assert_eq!(wake, s.now.saturating_add(Duration::from_secs(30)).unwrap());
    assert!(s.advance(29).is_empty());
    let out = s.advance(1);
    assert!(only_a_dead_listener_eviction(&out), "{out:?}");
    assert!(s.advance(600).is_empty(), "evicted once");
}

#[test]
fn a_listener_dying_as_its_backoff_ends_is_evicted_at_once() {
    let mut s = Sim::new(Thresholds::default());
    s.failing_generation(CONFLICT);
    s.failing_generation(CONFLICT);
    s.start(false);
    s.line(CONFLICT);
    let StartGate::Closed { until } = s.d.start_gate(s.now) else {
        panic!("three conflicts hold a backoff");
    };
    s.now = until;
    let out = s.end(1, true);
    assert!(only_a_dead_listener_eviction(&out), "{out:?}");
}

#[test]
fn restart_in_place_during_backoff_is_evicted() {
    let mut s = Sim::in_a_conflict_loop();
    s.advance(10);
    let out = s.start(true);
    assert!(matches!(
        out.as_slice(),
        [Decision::Evict {
            cause: EvictCause::RestartedDuringBackoff,
            ..
        }]
    ));
    // A restart in place once the delay is served, from the backoff's
    // end on, is fine.
    let mut s = Sim::in_a_conflict_loop();
    let StartGate::Closed { until } = s.d.start_gate(s.now) else {
        panic!("three conflicts hold a backoff")
    };
    s.wait_gate();
    assert_eq!(s.now, until);
    assert!(s.start(true).is_empty());
    // A new pod (not in place) during the backoff is not evicted either:
    // the gate is what holds it.
    let mut s = Sim::in_a_conflict_loop();
    assert!(s.start(false).is_empty());
}

#[test]
fn a_permanent_conflict_is_suspected_as_early_with_the_steady_phase() {
    // 30+60+120+240+480 s, then three starts at the 600 s cap.
    assert_eq!(
        duplicate_suspected_after(&Thresholds::default()),
        Duration::from_secs(2730)
    );
    let first_suspicion = |t: Thresholds| {
        let mut s = Sim::new(Thresholds {
            eviction_budget: 100,
            ..t
        });
        for _ in 0..3 {
            s.failing_generation(CONFLICT);
        }
        let since = s.now;
        for _ in 0..100 {
            s.wait_gate();
            let out = s.failing_generation(CONFLICT);
            if reasons(&out).contains(&Reason::DuplicateScaleSetSuspected) {
                assert_eq!(s.d.status().current_delay, Some(Duration::from_secs(600)));
                return s.now.duration_since(since).as_secs();
            }
        }
        panic!("never suspected");
    };
    let doubling_only = first_suspicion(doubling());
    let with_steady = first_suspicion(Thresholds::default());
    // Both have waited the same 2730 s of delays; the steady phase's extra
    // starts add only their own run time (about a second each here), far
    // less than the one capped step (600 s) a later suspicion would cost.
    assert!(
        with_steady <= doubling_only + 30,
        "steady phase: {with_steady} s, doubling only: {doubling_only} s"
    );
    assert!(with_steady >= 2730, "{with_steady}");
}

#[test]
fn duplicate_suspected_after_caps_keeps_backoff_and_stops_evicting() {
    let t = Thresholds {
        eviction_budget: 100,
        ..doubling()
    };
    let mut s = Sim::new(t);
    for _ in 0..3 {
        s.failing_generation(CONFLICT);
    }
    // 60, 120, 240, 480, 600 (reaches the cap), then 3 failures at the cap.
    for _ in 0..7 {
        s.wait_gate();
        s.failing_generation(CONFLICT);
    }
    assert_eq!(count(&s.log, Reason::DuplicateScaleSetSuspected), 0);
    s.wait_gate();
    let out = s.failing_generation(CONFLICT);
    assert!(reasons(&out).contains(&Reason::DuplicateScaleSetSuspected));
    let msg = out
        .iter()
        .find(|d| d.reason() == Reason::DuplicateScaleSetSuspected)
        .unwrap()
        .message()
        .to_owned();
    assert!(msg.contains("second installation") && msg.contains("GitHub has an incident"));
    assert!(s.d.status().duplicate_suspected);
    // The capped backoff stays.
    assert_eq!(s.d.status().current_delay, Some(Duration::from_secs(600)));
    assert!(matches!(s.d.start_gate(s.now), StartGate::Closed { .. }));
    // An in-place restart during the backoff is no longer evicted.
    s.advance(10);
    assert!(s.start(true).is_empty());
}

#[test]
fn duplicate_is_not_suspected_for_other_causes() {
    let mut s = Sim::new(doubling());
    for _ in 0..14 {
        s.wait_gate();
        s.failing_generation(ListenerEvent::Fatal(FatalKind::Auth));
    }
    assert_eq!(count(&s.log, Reason::DuplicateScaleSetSuspected), 0);
    assert_eq!(s.d.status().current_delay, Some(Duration::from_secs(600)));
}

#[test]
fn eviction_budget_per_window() {
    let t = Thresholds {
        eviction_budget: 2,
        eviction_window: Duration::from_secs(3600),
        ..Thresholds::default()
    };
    let mut s = Sim::new(t);
    let mut evictions = 0;
    let mut exhausted = 0;
    for _ in 0..4 {
        s.start(false);
        s.line(ListenerEvent::SessionEstablished);
        s.advance(60);
        let out = s.end(1, true);
        evictions += out
            .iter()
            .filter(|d| matches!(d, Decision::Evict { .. }))
            .count();
        exhausted += count(&out, Reason::EvictionBudgetExhausted);
    }
    assert_eq!(evictions, 2);
    assert_eq!(exhausted, 2);
    // The dead listener's eviction waits for the budget to free.
    let wake = s.d.next_wakeup().unwrap();
    assert_eq!(
        wake,
        t0().saturating_add(Duration::from_secs(60 + 3600)).unwrap()
    );
    let secs = wake.duration_since(s.now).as_secs() as u64;
    let out = s.advance(secs);
    assert!(
        matches!(out.as_slice(), [Decision::Evict { .. }]),
        "{out:?}"
    );
}

#[test]
fn hung_listener_is_evicted_when_opted_in() {
    let t = Thresholds {
        hung_after: Some(Duration::from_secs(300)),
        ..Thresholds::default()
    };
    let mut s = Sim::new(t);
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    s.advance(200);
    s.line(ListenerEvent::Other);
    assert!(s.advance(299).is_empty());
    let out = s.advance(1);
    assert_eq!(
        reasons(&out),
        vec![Reason::ListenerHung, Reason::ListenerEvicted]
    );
    assert_eq!(
        s.d.next_wakeup(),
        None,
        "a hung run has no deadline left to wake up for"
    );
    assert!(s.advance(1000).is_empty(), "one hung eviction per run");
    // Off by default.
    let mut s = Sim::new(Thresholds::default());
    s.start(false);
    assert!(s.advance(100_000).is_empty());
    // Up for --established-after since first watched: it holds its
    // session, and nothing is left to wake up for.
    assert!(s.advance(600).is_empty());
    assert_eq!(s.d.next_wakeup(), None);
}

#[test]
fn dry_run_reports_but_never_acts() {
    let t = Thresholds {
        dry_run: true,
        hung_after: Some(Duration::from_secs(60)),
        ..Thresholds::default()
    };
    let mut s = Sim::new(t);
    for _ in 0..3 {
        s.failing_generation(CONFLICT);
    }
    s.advance(1);
    s.start(true);
    s.advance(61);
    s.end(1, true);
    assert!(
        s.log
            .iter()
            .all(|d| !matches!(d, Decision::Evict { .. } | Decision::DelayStart { .. }))
    );
    let r = s.reasons();
    assert!(r.contains(&Reason::ConflictLoopDetected));
    assert!(r.contains(&Reason::DryRunStartDelay));
    assert!(r.contains(&Reason::DryRunEviction));
    assert_eq!(s.d.start_gate(s.now), StartGate::Open);
}

#[test]
fn same_line_twice_counts_once() {
    let mut s = Sim::new(Thresholds::default());
    s.start(false);
    let key = EntryKey {
        at: s.now,
        hash: 42,
    };
    let e = Input::Entry {
        at: s.now,
        event: ListenerEvent::SessionConflict { fatal: false },
        key: Some(key),
    };
    assert_eq!(reasons(&s.feed(e.clone())), vec![Reason::SessionConflict]);
    assert!(s.feed(e.clone()).is_empty());
    // An older line after a reconnect is a replay too.
    let older = Input::Entry {
        at: t0().saturating_sub(Duration::from_secs(1)).unwrap(),
        event: ListenerEvent::SessionConflict { fatal: false },
        key: Some(EntryKey {
            at: t0().saturating_sub(Duration::from_secs(1)).unwrap(),
            hash: 7,
        }),
    };
    assert!(s.feed(older).is_empty());
    // Another line at the same time is not.
    let other = Input::Entry {
        at: s.now,
        event: ListenerEvent::SessionConflict { fatal: false },
        key: Some(EntryKey {
            at: s.now,
            hash: 43,
        }),
    };
    assert_eq!(s.feed(other).len(), 1);
    assert_eq!(s.d.status().conflicts_in_window, 2);
}

#[test]
fn resumed_run_is_not_a_new_run() {
    let mut s = Sim::new(Thresholds::default());
    s.start(false);
    let id = format!("c{}", s.run);
    s.line(ListenerEvent::SessionEstablished);
    let again = s.feed(Input::RunStarted {
        at: s.now,
        run_id: id,
        in_place: false,
    });
    assert!(again.is_empty());
    assert!(s.d.history().run.as_ref().unwrap().established);
}

#[test]
fn history_survives_pod_generations_as_json() {
    let t = Thresholds::default();
    let mut now = t0();
    let mut json = History::default().to_json();
    let mut all = Vec::new();
    // Every generation is a new watchdog process loading the Lease.
    for g in 0..3 {
        let mut d = Detector::from_history(t.clone(), History::from_json(&json).unwrap());
        all.extend(d.handle(Input::RunStarted {
            at: now,
            run_id: format!("gen{g}"),
            in_place: false,
        }));
        now = now.saturating_add(Duration::from_secs(1)).unwrap();
        all.extend(d.handle(Input::Entry {
            at: now,
            event: CONFLICT,
            key: None,
        }));
        json = d.history().to_json();
        now = now.saturating_add(Duration::from_secs(5)).unwrap();
    }
    assert!(reasons(&all).contains(&Reason::ConflictLoopDetected));
    let d = Detector::from_history(t, History::from_json(&json).unwrap());
    assert!(matches!(d.start_gate(now), StartGate::Closed { .. }));
    // Unknown fields from a newer writer are ignored; missing ones default.
    let h = History::from_json(r#"{"version": 9, "future": [1,2,3]}"#).unwrap();
    assert!(h.conflicts.is_empty());
    assert!(History::from_json("not json").is_err());
}

#[test]
fn history_stays_bounded() {
    let t = Thresholds {
        conflict_threshold: 1000,
        conflict_window: Duration::from_secs(365 * 86_400),
        ..Thresholds::default()
    };
    let mut s = Sim::new(t);
    s.start(false);
    for i in 0..10_000u64 {
        s.feed(Input::Entry {
            at: s.now,
            event: ListenerEvent::SessionConflict { fatal: false },
            key: Some(EntryKey { at: s.now, hash: i }),
        });
        if i % 10 == 0 {
            s.advance(1);
        }
    }
    let h = s.d.history();
    assert!(h.conflicts.len() <= 64, "{}", h.conflicts.len());
    assert!(h.run.as_ref().unwrap().seen.len() <= 64);
    assert!(h.to_json().len() < 16 * 1024);
}

#[test]
fn legacy_retries_make_a_loop_within_one_run() {
    let mut s = Sim::new(Thresholds::default());
    s.start(false);
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(s.line(ListenerEvent::SessionConflict { fatal: false }));
        s.advance(30);
    }
    assert_eq!(
        reasons(&all),
        vec![
            Reason::SessionConflict,
            Reason::SessionConflict,
            Reason::SessionConflict,
            Reason::ConflictLoopDetected,
            Reason::ListenerStartDelayed
        ]
    );
}

#[test]
fn a_clock_going_backwards_does_not_rewind_windows() {
    let mut s = Sim::new(Thresholds::default());
    s.failing_generation(CONFLICT);
    s.advance(60);
    // A skewed input from the past is taken as now.
    let past = t0().saturating_sub(Duration::from_secs(3600)).unwrap();
    let out = s.feed(Input::RunStarted {
        at: past,
        run_id: "skewed".into(),
        in_place: false,
    });
    assert!(out.is_empty());
    assert_eq!(s.d.status().conflicts_in_window, 1);
    let run = s.d.history().run.as_ref().expect("the skewed run");
    assert_eq!(run.started, s.now, "started at the detector's clock");
}

#[test]
fn late_lines_after_the_end_count_for_the_ended_run() {
    // The pod watch reports the end before the log delivers the fatal line.
    let mut s = Sim::new(Thresholds::default());
    let mut all = Vec::new();
    for _ in 0..3 {
        s.start(false);
        s.advance(1);
        all.extend(s.end(1, false));
        all.extend(s.line(CONFLICT));
        s.advance(5);
    }
    let r = reasons(&all);
    // Counted once per run: three failed starts, three conflicts.
    assert_eq!(count(&all, Reason::SessionConflict), 3);
    assert_eq!(s.d.history().failed_starts.len(), 3);
    // The third end made a crash loop of unknown cause; its late line shows
    // it is a conflict loop.
    assert!(r.contains(&Reason::CrashLoopDetected), "{r:?}");
    assert!(r.contains(&Reason::ConflictLoopDetected), "{r:?}");
    assert_eq!(count(&all, Reason::ListenerStartDelayed), 1);
    let l = s.d.history().loop_state.unwrap();
    assert!(l.conflict_loop);
    assert_eq!(l.cause, Cause::SessionConflict);
    assert!(
        s.d.history()
            .failed_starts
            .iter()
            .all(|f| f.cause == Cause::SessionConflict)
    );
}

#[test]
fn a_late_error_line_names_the_cause_of_a_loop_of_silent_deaths() {
    let mut s = Sim::new(Thresholds::default());
    let network = ListenerEvent::Fatal(FatalKind::Network);
    for _ in 0..3 {
        s.start(false);
        s.advance(1);
        s.end(1, false);
        s.line(network);
        s.advance(5);
    }
    let h = s.d.history();
    assert_eq!(h.loop_state.map(|l| l.cause), Some(Cause::Network));
    assert!(h.failed_starts.iter().all(|f| f.cause == Cause::Network));
}

#[test]
fn an_ended_run_announced_again_is_not_a_new_run() {
    let mut s = Sim::new(Thresholds::default());
    s.failing_generation(CONFLICT);
    let id = format!("c{}", s.run);
    // The watchdog restarted and announces the same (ended) container.
    assert!(
        s.feed(Input::RunStarted {
            at: s.now,
            run_id: id,
            in_place: false,
        })
        .is_empty()
    );
    assert_eq!(s.d.history().failed_starts.len(), 1);
    assert_eq!(
        s.d.history().run.as_ref().unwrap().failure,
        Some(Cause::SessionConflict)
    );
}

/// What an earlier pod generation stored, then what this one saw on its own
/// (its Lease read came late): merged as `run` merges them.
fn merged(stored: &Sim, ours: &Sim) -> Detector {
    let h = History::merge(stored.d.history(), ours.d.history());
    Detector::from_history(ours.d.thresholds().clone(), h)
}

/// Two generations met a conflict and stored it; the third generation's
/// watchdog saw its own conflict before it could read that history.
fn stored_two_then_one_more(t: Thresholds) -> (Sim, Sim) {
    let mut stored = Sim::new(t.clone());
    stored.failing_generation(CONFLICT);
    stored.advance(5);
    stored.failing_generation(CONFLICT);
    stored.advance(5);
    let mut ours = Sim::new(t);
    ours.now = stored.now;
    ours.run = stored.run;
    ours.failing_generation(CONFLICT);
    (stored, ours)
}

#[test]
fn a_merged_history_starts_the_loop_it_holds_at_once() {
    let (stored, ours) = stored_two_then_one_more(Thresholds::default());
    assert!(stored.d.history().loop_state.is_none());
    assert!(ours.d.history().loop_state.is_none());
    // In order, the third conflict starts the loop.
    let mut in_order = Sim::new(Thresholds::default());
    for _ in 0..2 {
        in_order.failing_generation(CONFLICT);
        in_order.advance(5);
    }
    in_order.failing_generation(CONFLICT);
    let want = in_order.d.history().loop_state.expect("in order: a loop");

    let mut d = merged(&stored, &ours);
    assert!(
        d.history().loop_state.is_none(),
        "merging alone starts nothing"
    );
    let now = ours.now.saturating_add(Duration::from_secs(2)).unwrap();
    let out = d.evaluate(now);
    assert_eq!(
        reasons(&out),
        vec![Reason::ConflictLoopDetected, Reason::ListenerStartDelayed],
        "{out:?}"
    );
    assert_eq!(d.history().loop_state, Some(want));
    assert_eq!(
        d.start_gate(now),
        StartGate::Closed {
            until: ours.now.saturating_add(Duration::from_secs(30)).unwrap()
        }
    );
    assert_eq!(d.history().conflicts.len(), 3, "nothing counted twice");
    assert_eq!(d.history().failed_starts.len(), 3);
    // Evaluated again (another merge, a later save): nothing new.
    assert!(d.evaluate(now).is_empty());
    let later = now.saturating_add(Duration::from_secs(1)).unwrap();
    assert!(d.evaluate(later).is_empty());
}

#[test]
fn a_merged_history_below_the_threshold_decides_nothing() {
    let mut stored = Sim::new(Thresholds::default());
    stored.failing_generation(CONFLICT);
    let mut ours = Sim::new(Thresholds::default());
    ours.now = stored.now.saturating_add(Duration::from_secs(5)).unwrap();
    ours.run = stored.run;
    ours.failing_generation(CONFLICT);
    let mut d = merged(&stored, &ours);
    assert!(d.evaluate(ours.now).is_empty());
    assert!(d.history().loop_state.is_none());
    // Conflicts stored 20 minutes before ours are out of its window.
    let mut stored = Sim::new(Thresholds::default());
    stored.failing_generation(CONFLICT);
    stored.failing_generation(CONFLICT);
    let mut ours = Sim::new(Thresholds::default());
    ours.now = stored
        .now
        .saturating_add(Duration::from_secs(1200))
        .unwrap();
    ours.run = stored.run;
    ours.failing_generation(CONFLICT);
    let mut d = merged(&stored, &ours);
    assert!(d.evaluate(ours.now).is_empty());
    assert!(d.history().loop_state.is_none());
    // A loop the evidence made that would be over by now is not started.
    let (stored, ours) = stored_two_then_one_more(Thresholds::default());
    let mut d = merged(&stored, &ours);
    let late = ours.now.saturating_add(Duration::from_secs(3600)).unwrap();
    assert!(d.evaluate(late).is_empty());
    assert!(d.history().loop_state.is_none());
}

#[test]
fn a_merged_loop_whose_delay_is_served_is_reported_without_a_delay() {
    let (stored, mut ours) = stored_two_then_one_more(doubling());
    let mut d = merged(&stored, &ours);
    let now = ours.now.saturating_add(Duration::from_secs(40)).unwrap();
    let out = d.evaluate(now);
    assert_eq!(reasons(&out), vec![Reason::ConflictLoopDetected], "{out:?}");
    assert_eq!(d.start_gate(now), StartGate::Open);
    // The next failure escalates, as it would have in order.
    ours.d = d;
    ours.now = now;
    let out = ours.failing_generation(CONFLICT);
    let delay = out.iter().find_map(|d| match d {
        Decision::DelayStart { delay_ms, .. } => Some(*delay_ms),
        _ => None,
    });
    assert_eq!(delay, Some(60_000), "{out:?}");
}

#[test]
fn a_merged_loop_evicts_a_listener_restarted_in_place_within_the_budget() {
    // Ours: the third conflict's run ended and the listener restarted in
    // place (restartPolicy Always) before the history was read.
    let setup = |t: Thresholds| {
        let (stored, mut ours) = stored_two_then_one_more(t);
        ours.advance(10);
        assert!(ours.start(true).is_empty(), "no loop known yet");
        ours.advance(1);
        (stored, ours)
    };
    let (stored, ours) = setup(Thresholds::default());
    let mut d = merged(&stored, &ours);
    let out = d.evaluate(ours.now);
    assert_eq!(
        reasons(&out),
        vec![
            Reason::ConflictLoopDetected,
            Reason::ListenerStartDelayed,
            Reason::ListenerEvicted
        ],
        "{out:?}"
    );
    assert!(matches!(
        out.last(),
        Some(Decision::Evict {
            cause: EvictCause::RestartedDuringBackoff,
            ..
        })
    ));
    assert_eq!(d.history().evictions.len(), 1);
    assert!(d.evaluate(ours.now).is_empty(), "evicted once");

    // The budget counts the evictions of both histories.
    let t = Thresholds {
        eviction_budget: 1,
        ..Thresholds::default()
    };
    let (mut stored, ours) = setup(t);
    let mut h = stored.d.history().clone();
    h.evictions.push(stored.now);
    stored.d = Detector::from_history(stored.d.thresholds().clone(), h);
    let mut d = merged(&stored, &ours);
    let out = d.evaluate(ours.now);
    assert_eq!(
        reasons(&out),
        vec![
            Reason::ConflictLoopDetected,
            Reason::ListenerStartDelayed,
            Reason::EvictionBudgetExhausted
        ],
        "{out:?}"
    );
    assert_eq!(d.history().evictions.len(), 1);
}

/// Reports are published as Events at once, before any eviction is tried
/// (which may still be over budget, refused, or found moot): they never
/// say the pod is being evicted; only the eviction decision's own message
/// (published as ListenerEvicted once the API server accepted it) does.
#[test]
fn only_a_dead_listener_is_evicted_later_when_the_budget_frees() {
    // A hung listener still runs: with no budget left it is reported, not
    // put aside for later (a dead one is, as nothing else replaces it).
    let t = Thresholds {
        hung_after: Some(Duration::from_secs(300)),
        eviction_budget: 1,
        eviction_window: Duration::from_secs(3600),
        ..Thresholds::default()
    };
    let mut s = Sim::new(t);
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    s.advance(60);
    let out = s.end(2, true);
    assert!(
        only_a_dead_listener_eviction(&out),
        "the dead listener takes the budget: {out:?}"
    );
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    assert_eq!(
        reasons(&s.advance(300)),
        vec![Reason::ListenerHung, Reason::EvictionBudgetExhausted]
    );
    assert_eq!(s.d.next_wakeup(), None);
    let later = s.advance(2 * 3600);
    assert!(
        !later.iter().any(|d| matches!(d, Decision::Evict { .. })),
        "{later:?}"
    );
}

#[test]
fn reports_do_not_claim_an_eviction_that_may_not_happen() {
    let claims = |d: &Decision| {
        matches!(d, Decision::Report { .. }) && d.message().contains("evicting the pod")
    };
    // Hung, with no budget left: reported, not evicted.
    let t = Thresholds {
        hung_after: Some(Duration::from_secs(300)),
        eviction_budget: 0,
        ..Thresholds::default()
    };
    let mut s = Sim::new(t);
    s.start(false);
    s.line(ListenerEvent::SessionEstablished);
    let out = s.advance(300);
    assert_eq!(
        reasons(&out),
        vec![Reason::ListenerHung, Reason::EvictionBudgetExhausted]
    );
    assert!(!out.iter().any(claims), "{out:?}");
    // Hung, within the budget: the eviction's message says it.
    let t = Thresholds {
        hung_after: Some(Duration::from_secs(300)),
        ..Thresholds::default()
    };
    let mut s = Sim::new(t);
    s.start(false);
    let out = s.advance(300);
    assert!(!out.iter().any(claims), "{out:?}");
    assert!(
        matches!(out.last(), Some(Decision::Evict { message, .. }) if message.contains("evicting the pod")),
        "{out:?}"
    );
    // A dead listener during a backoff: evicted later, if still dead.
    let mut s = Sim::new(Thresholds::default());
    s.failing_generation(CONFLICT);
    s.failing_generation(CONFLICT);
    s.start(false);
    s.line(CONFLICT);
    let out = s.end(1, true);
    assert_eq!(reasons(&out), vec![Reason::ListenerDead]);
    assert!(!out.iter().any(claims), "{out:?}");
}

/// Listener lines at log level `warn` (0.14.2's JSON and 0.10.1's text):
/// no info line ever says the session is held.
const WARN_LINES: [&str; 2] = [
    r#"{"time":"2026-03-02T04:10:00.000Z","level":"WARN","source":{"function":"main.run","file":"/workspace/cmd/ghalistener/main.go","line":80},"msg":"metrics server is disabled","component":"listener-app"}"#,
    "2026-03-02T04:10:00Z\tWARN\tlistener-app.listener\tproxy configuration ignored\t{\"reason\": \"no proxy URL\"}",
];

#[test]
fn established_after_counts_from_the_first_look_at_a_run_not_its_start() {
    let mut s = Sim::in_a_conflict_loop();
    s.advance(600);
    s.start(false);
    // Nothing is seen of the run for an hour (the watchdog was away): the
    // hour is no proof that it held its session.
    s.advance(3600);
    assert!(s.d.status().loop_active, "{:?}", s.reasons());
    s.advance(Thresholds::default().established_after.as_secs());
    assert!(!s.d.status().loop_active, "{:?}", s.reasons());
}

#[test]
fn a_run_up_for_established_after_without_failing_ends_the_loop_at_any_log_level() {
    for line in WARN_LINES {
        let event = arc_watchdog::parser::classify(line.as_bytes());
        assert_eq!(event, ListenerEvent::Other, "{line}");
        let mut s = Sim::in_a_conflict_loop();
        assert!(s.d.status().loop_active, "three conflicts make a loop");
        // The next generation starts after the gate and only ever logs at
        // warn level.
        s.advance(600);
        s.start(false);
        s.line(event);
        let established_after = Thresholds::default().established_after.as_secs();
        let before = s.advance(established_after - 10);
        assert!(s.d.status().loop_active, "not yet: {before:?}");
        let at = s.d.next_wakeup().expect("a wake-up for the run's bound");
        s.advance(10);
        assert_eq!(s.now, at, "the wake-up is the bound");
        assert!(!s.d.status().loop_active, "{line}: the loop ended");
        assert!(
            s.log
                .iter()
                .any(|d| d.reason() == Reason::ListenerRecovered),
            "{line}: ListenerRecovered"
        );
        // Hours later it exits: an ordinary end, not another failed start.
        s.advance(4 * 3600);
        let out = s.end(1, false);
        assert!(!s.d.status().loop_active, "{out:?}");
        assert!(s.d.start_gate(s.now) == StartGate::Open);
    }
}

#[test]
fn the_same_conflict_seen_by_two_watchdog_processes_counts_once() {
    // A restarted sidecar reads the run's log again while the Lease still
    // holds what its predecessor saved: both saw the same line, with the
    // kubelet's timestamp.
    let mut first = Sim::new(Thresholds::default());
    let mut second = Sim::new(Thresholds::default());
    for s in [&mut first, &mut second] {
        s.start(false);
        s.advance(1);
        s.line(CONFLICT);
    }
    let merged = History::merge(first.d.history(), second.d.history());
    assert_eq!(merged.conflicts.len(), 1, "{merged:?}");
    assert_eq!(merged.failed_starts.len(), 1, "{merged:?}");
    let mut d = Detector::from_history(Thresholds::default(), merged);
    assert_eq!(d.status().conflicts_in_window, 1);
    assert!(d.evaluate(second.now).is_empty(), "one conflict is no loop");
}

#[test]
fn a_merged_loop_takes_only_a_start_before_its_end_for_a_restart_during_it() {
    // Where the merged loop's backoff ends.
    let (stored, ours) = stored_two_then_one_more(Thresholds::default());
    let mut probe = merged(&stored, &ours);
    probe.evaluate(ours.now);
    let end = probe.history().loop_state.expect("a loop").not_before;
    let before_end = end.saturating_sub(Duration::from_secs(1)).unwrap();
    // Restarted in place, stamped at `start` (the node's clock may run
    // ahead of the watchdog's), and evaluated a second before the end.
    let evicted = |start: Timestamp| {
        let (stored, mut ours) = stored_two_then_one_more(Thresholds::default());
        ours.now = start;
        ours.start(true);
        let mut d = merged(&stored, &ours);
        d.evaluate(before_end).iter().any(|d| {
            matches!(
                d,
                Decision::Evict {
                    cause: EvictCause::RestartedDuringBackoff,
                    ..
                }
            )
        })
    };
    assert!(evicted(before_end), "started during the backoff");
    assert!(!evicted(end), "started when the backoff ended: served");
}

#[test]
fn a_stored_failed_start_a_window_old_makes_no_loop() {
    // Three failed starts stored: the window ending at the last one holds
    // the first only if it is younger than the window.
    let t = Thresholds::default();
    let w = t.conflict_window;
    let judge = |first: Timestamp| {
        let last = t0().saturating_add(w).unwrap();
        let middle = t0().saturating_add(w / 2).unwrap();
        let h = History {
            failed_starts: [first, middle, last]
                .into_iter()
                .map(|at| FailedStart {
                    at,
                    cause: Cause::Network,
                })
                .collect(),
            ..History::default()
        };
        let mut d = Detector::from_history(t.clone(), h);
        d.evaluate(last);
        d.history().loop_state
    };
    assert_eq!(judge(t0()), None, "a window old: out of it");
    let younger = t0().saturating_add(Duration::from_millis(1)).unwrap();
    let l = judge(younger).expect("all three in the window: a loop");
    assert_eq!(l.cause, Cause::Network);
}

#[test]
fn a_quiet_loop_ends_only_after_its_quiet_period() {
    let t = Thresholds::default();
    let mut s = Sim::new(t.clone());
    for _ in 0..3 {
        s.failing_generation(CONFLICT);
        s.advance(5);
    }
    let l = s.d.history().loop_state.expect("a loop");
    let quiet_until = l
        .last_failure
        .saturating_add(Duration::from_millis(l.delay_ms))
        .unwrap()
        .saturating_add(t.conflict_window)
        .unwrap();
    s.feed(Input::Tick { at: quiet_until });
    assert!(
        s.d.history().loop_state.is_some(),
        "not over at the instant"
    );
    let after = quiet_until
        .saturating_add(Duration::from_millis(1))
        .unwrap();
    s.feed(Input::Tick { at: after });
    assert_eq!(s.d.history().loop_state, None, "over just after");
}

#[test]
fn a_merged_history_is_evaluated_at_a_later_time_than_its_clock() {
    let (stored, ours) = stored_two_then_one_more(doubling());
    let mut d = merged(&stored, &ours);
    // The detector's clock stands at ours.now; evaluated 40 s later, the
    // 30 s delay is served (not judged at the clock's older time).
    assert!(d.handle(Input::Tick { at: ours.now }).is_empty());
    let later = ours.now.saturating_add(Duration::from_secs(40)).unwrap();
    let out = d.evaluate(later);
    assert_eq!(reasons(&out), vec![Reason::ConflictLoopDetected], "{out:?}");
    assert_eq!(d.start_gate(later), StartGate::Open);
}

#[test]
fn the_conflict_loop_report_says_what_was_seen_and_what_to_do() {
    let mut s = Sim::new(Thresholds::default());
    for _ in 0..3 {
        s.failing_generation(CONFLICT);
        s.advance(5);
    }
    let message = s
        .log
        .iter()
        .find_map(|d| match d {
            Decision::Report {
                reason: Reason::ConflictLoopDetected,
                message,
                ..
            } => Some(message.clone()),
            _ => None,
        })
        .expect("a ConflictLoopDetected report");
    assert!(
        message.starts_with(
            "session-conflict loop: 3 session conflicts within 10m with no session in between; "
        ),
        "{message}"
    );
    assert!(
        message.ends_with(Cause::SessionConflict.advice()),
        "{message}"
    );
}

#[test]
fn lines_before_any_run_start_belong_to_an_implicit_run() {
    // A watchdog without history that starts mid-run: the first thing it
    // sees is output, not the run's start.
    let mut s = Sim::new(Thresholds::default());
    s.line(CONFLICT);
    assert_eq!(s.d.status().conflicts_in_window, 1, "the line counted");
    let run = s.d.history().run.as_ref().expect("an implicit run");
    assert_eq!(run.started, s.now);
    // Likewise an end seen first.
    let mut s = Sim::new(Thresholds::default());
    s.end(1, false);
    assert!(
        s.d.history()
            .run
            .as_ref()
            .is_some_and(|r| r.ended == Some(s.now))
    );
}

#[test]
fn a_merged_history_evaluated_at_an_earlier_time_is_judged_at_its_clock() {
    let (stored, ours) = stored_two_then_one_more(doubling());
    let mut d = merged(&stored, &ours);
    // The clock is 40 s on (the 30 s delay served); a skewed earlier time
    // does not take it back.
    let later = ours.now.saturating_add(Duration::from_secs(40)).unwrap();
    assert!(d.handle(Input::Tick { at: later }).is_empty());
    let out = d.evaluate(ours.now);
    assert_eq!(reasons(&out), vec![Reason::ConflictLoopDetected], "{out:?}");
}

#[test]
fn a_failed_start_leaves_the_window_at_its_edge() {
    let t = Thresholds::default();
    let mut s = Sim::new(t.clone());
    s.failing_generation(ListenerEvent::Fatal(FatalKind::Auth));
    let failed_at = s.d.history().failed_starts[0].at;
    let edge = failed_at.saturating_add(t.conflict_window).unwrap();
    let before = edge.saturating_sub(Duration::from_millis(1)).unwrap();
    s.feed(Input::Tick { at: before });
    assert_eq!(s.d.history().failed_starts.len(), 1, "inside the window");
    s.feed(Input::Tick { at: edge });
    assert!(s.d.history().failed_starts.is_empty(), "out at the edge");
}
