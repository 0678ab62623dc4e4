//! S2: a stale session (a listener killed without deleting it) that expires
//! on GitHub's side after a lifetime T, planted before the first listener
//! starts; run without and with arc-watchdog side by side. Counts the
//! session calls until the first success, the listener generations, and how
//! long after the expiry the listener got its session.

use std::time::Duration;

use anyhow::Result;
use arc_watchdog_tests::control_plane::SidecarMode;
use arc_watchdog_tests::fake_github::Control;
use arc_watchdog_tests::timeline::{self, Call, Sample, Timeline};
use jiff::Timestamp;

use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, finish};
use crate::{Args, SCALE_SET, status};

/// The watchdog's default `--eviction-budget`: more evictions than this in
/// one loop would be a storm.
const EVICTION_BUDGET: usize = 3;
/// From this lifetime on the stock loop is long enough that the goal of
/// 10x fewer session calls applies.
const RATIO_GOAL_FROM: Duration = Duration::from_secs(600);

/// The scenario's name for one lifetime, e.g. `S2-stale-session-120s`.
pub(crate) fn name(ttl: Duration) -> String {
    format!("S2-stale-session-{}s", ttl.as_secs())
}

/// The version label of an outcome: the version, `-legacy` for the legacy
/// listener.
pub(crate) fn label(version: &str, legacy: bool) -> String {
    if legacy {
        format!("{version}-legacy")
    } else {
        version.to_owned()
    }
}

/// How often the start gate's delay is sampled for the timeline.
const GATE_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What one leg measured.
#[derive(Debug, Clone)]
struct Leg {
    /// Session-create calls up to and including the first success.
    calls: u64,
    /// Of those, answered 409.
    conflicts: u64,
    /// Seconds from the stale session's expiry to the first success.
    heal: f64,
    /// Listener processes started until then.
    starts: usize,
    /// Evictions by arc-watchdog (its log).
    evictions: usize,
    /// The same over time, for the picture.
    timeline: timeline::Leg,
}

async fn leg(bins: &Binaries, opts: StackOpts, ttl: Duration, o: &mut Outcome) -> Result<Leg> {
    let watchdog = opts.watchdog.is_some();
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        // The first scale set the fake registers gets id 1: plant the stale
        // session before ARC creates it, so that the very first listener conflicts.
        stack.fake.control(Control::InjectSession {
            scale_set_id: 1,
            owner: format!("{SCALE_SET}-crashed-listener"),
            ttl_ms: Some(ttl_ms),
        });
        let planted_ms = stack.fake.now_ms();
        let planted_at = Timestamp::now();
        stack.create_runner_set(&opts).await?;
        let timeout = ttl + Duration::from_secs(if watchdog { 900 } else { 180 });
        // With the watchdog, `status` must show the loop while it lasts:
        // read alongside the wait for the session.
        let session = stack.await_session(timeout);
        let loop_shown = status::await_row(
            &bins.watchdog,
            stack.cp.kubeconfig(),
            timeout,
            "status to show the loop",
            |r| status::LOOP_STATES.contains(&status::state(r)),
        );
        tokio::pin!(session, loop_shown);
        let mut shown = None;
        let mut gate_delay = Vec::new();
        let mut sample = tokio::time::interval(GATE_SAMPLE_EVERY);
        loop {
            tokio::select! {
                r = &mut session => {
                    r?;
                    break;
                }
                s = &mut loop_shown, if watchdog && shown.is_none() => shown = Some(s),
                _ = sample.tick(), if watchdog => {
                    // Between generations no watchdog answers: a gap.
                    if let Ok(v) = stack.watchdog_metric("arc_watchdog_start_delay_seconds").await {
                        gate_delay.push(Sample { at_s: seconds_since(planted_at), value: v });
                    }
                }
            };
        }
        let st = stack.fake.stats();
        let creates: Vec<_> = st
            .session_events
            .iter()
            .filter(|e| e.op == "create")
            .collect();
        let first_ok = creates
            .iter()
            .find(|e| e.status == 200)
            .map(|e| e.at_ms)
            .ok_or_else(|| anyhow::anyhow!("no session created"))?;
        let upto: Vec<_> = creates.iter().filter(|e| e.at_ms <= first_ok).collect();
        let expiry = planted_ms + ttl_ms;
        let leg = Leg {
            calls: upto.len() as u64,
            conflicts: upto.iter().filter(|e| e.status == 409).count() as u64,
            heal: (first_ok as f64 - expiry as f64) / 1000.0,
            starts: stack.listener_starts(),
            evictions: stack.watchdog_log_count("evicting the own pod", None)?,
            timeline: timeline::Leg {
                label: if watchdog { "with" } else { "without" }.to_owned(),
                session_calls: upto
                    .iter()
                    .map(|e| Call {
                        at_s: (e.at_ms as f64 - planted_ms as f64) / 1000.0,
                        status: e.status,
                    })
                    .collect(),
                listener_starts: stack
                    .listener_start_times()
                    .into_iter()
                    .map(|t| (t - planted_at).total(jiff::Unit::Second).unwrap_or(0.0))
                    .collect(),
                gate_delay,
            },
        };
        if watchdog {
            o.notes.push(stack.watchdog_events_note("with").await);
            let looped = stack.watchdog_events().await?.iter().any(|e| {
                e.starts_with("ConflictLoopDetected") || e.starts_with("CrashLoopDetected")
            });
            match (&shown, looped) {
                (Some(Ok(r)), _) => o.check(
                    true,
                    format!(
                        "status showed the loop while it lasted ({})",
                        status::state(r)
                    ),
                ),
                (_, true) => o.check(false, "status showed the loop the watchdog detected"),
                (_, false) => o.notes.push(
                    "no loop detected (listener retries in process): none to show".to_owned(),
                ),
            }
            let healthy = status::await_row(
                &bins.watchdog,
                stack.cp.kubeconfig(),
                Duration::from_secs(60),
                "status healthy after the session",
                |r| status::state(r) == "healthy",
            )
            .await;
            o.check(
                healthy.is_ok(),
                "status shows the scale set healthy once the listener has its session",
            );
        }
        anyhow::Ok(leg)
    }
    .await;
    if let Err(e) = &result {
        o.check(
            false,
            format!("{}: {e:#}", if watchdog { "with" } else { "without" }),
        );
    }
    finish(stack, o, result.is_err()).await;
    result
}

/// S2 on one ARC version (and listener) with one stale-session lifetime.
pub(crate) async fn s2(
    bins: &Binaries,
    args: &Args,
    version: &'static str,
    legacy: bool,
    ttl: Duration,
) -> Result<Outcome> {
    let mut o = Outcome::new(&name(ttl), &label(version, legacy));
    o.num("stale_ttl_s", ttl.as_secs());
    let without = StackOpts {
        version,
        legacy_listener: legacy,
        watchdog: None,
        ..StackOpts::native(args)
    };
    let with = StackOpts {
        watchdog: Some(SidecarMode::Native),
        ..without.clone()
    };
    let (ra, rb) = o
        .side_by_side(
            async |a| leg(bins, without, ttl, a).await,
            async |b| leg(bins, with, ttl, b).await,
        )
        .await;
    let (Ok(without), Ok(with)) = (ra, rb) else {
        return Ok(o);
    };
    let picture = Timeline {
        arc_version: label(version, legacy),
        stale_lifetime_s: ttl.as_secs_f64(),
        legs: vec![without.timeline.clone(), with.timeline.clone()],
    };
    match write_timeline(&args.report, &name(ttl), &picture) {
        Ok(json) => o.notes.push(format!("timeline: {}", json.display())),
        Err(e) => o.check(false, format!("writing the timeline: {e:#}")),
    }
    o.num("session_calls_without", without.calls);
    o.num("session_calls_with", with.calls);
    let ratio = without.calls as f64 / with.calls.max(1) as f64;
    o.num("ratio", format!("{ratio:.1}"));
    o.num("listener_starts_without", without.starts);
    o.num("listener_starts_with", with.starts);
    // One generation of the stock loop: listener start to the next start.
    let generation = ttl.as_secs_f64() / without.starts.max(1) as f64;
    o.num("generation_s_without", format!("{generation:.1}"));
    // A listener that retries a 409 in process makes more conflicting calls
    // than there were listener processes.
    let retries = without.conflicts > without.starts as u64 + 1;
    o.num("retries_in_process", retries);
    o.num(
        "heal_after_expiry_without_s",
        format!("{:.1}", without.heal),
    );
    o.num("heal_after_expiry_s", format!("{:.1}", with.heal));
    o.num("added_outage_s", format!("{:.1}", with.heal - without.heal));
    o.num("evictions_with", with.evictions);
    for (leg, l) in [("without", &without), ("with", &with)] {
        o.check(
            l.heal >= 0.0,
            format!(
                "{leg}: no session before the stale one expired (heal {:.1}s)",
                l.heal
            ),
        );
        o.check(
            l.conflicts >= 1,
            format!(
                "{leg}: the stale session was met ({} conflicts)",
                l.conflicts
            ),
        );
    }
    if retries {
        // The listener paces itself (30 to 45 s apart, at random): the
        // watchdog must only stay out of its way.
        o.check(
            with.starts <= without.starts && with.evictions == 0,
            format!(
                "arc-watchdog adds no listener start and no eviction to in-process retries ({} vs {} starts, {} evictions)",
                with.starts, without.starts, with.evictions
            ),
        );
    } else {
        o.check(
            with.calls <= without.calls,
            format!(
                "no more session calls with arc-watchdog ({} vs {})",
                with.calls, without.calls
            ),
        );
    }
    o.check(
        with.evictions <= EVICTION_BUDGET,
        format!(
            "no eviction storm ({} evictions, budget {EVICTION_BUDGET})",
            with.evictions
        ),
    );
    if ttl >= RATIO_GOAL_FROM && !legacy && !retries {
        o.check(
            ratio >= 10.0,
            format!("at least 10x fewer session calls with arc-watchdog ({ratio:.1}x)"),
        );
    } else {
        o.notes.push(format!(
            "ratio {ratio:.1}x recorded, not held to 10x (lifetime {}s{})",
            ttl.as_secs(),
            if legacy || retries {
                ", listener retries in process"
            } else {
                ""
            }
        ));
    }
    // The longest single backoff step the default thresholds allow is
    // --backoff-max (10m).
    o.check(
        with.heal <= 600.0,
        format!(
            "with arc-watchdog healthy within one backoff step after expiry ({:.1}s)",
            with.heal
        ),
    );
    Ok(o)
}

/// Seconds from `t` until now.
fn seconds_since(t: Timestamp) -> f64 {
    (Timestamp::now() - t)
        .total(jiff::Unit::Second)
        .unwrap_or(0.0)
}

/// Writes `picture` as JSON and SVG beside the report
/// (`<report dir>/<scenario>-<version>.timeline.{json,svg}`); returns the
/// JSON's path. `make timeline` copies a run's pair into `docs/`.
fn write_timeline(
    report: &std::path::Path,
    scenario: &str,
    picture: &Timeline,
) -> Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let dir = report
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    let stem = format!("{scenario}-{}.timeline", picture.arc_version);
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(picture)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg, timeline::render_svg(picture))
        .with_context(|| format!("writing {}", svg.display()))?;
    Ok(json)
}
