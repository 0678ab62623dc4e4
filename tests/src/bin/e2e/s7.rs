//! S7: deterministic start-up failures and a death after the session, on
//! ARC 0.14.2, without and with arc-watchdog.
//!
//! - A revoked PAT (the registration-token call answers 401) and a scale
//!   set deleted on GitHub's side (session creates answer 404
//!   `RunnerScaleSetNotFoundException`) fail every listener at start-up;
//!   restarting never heals them. ARC 0.14.2 recreates the pod at once,
//!   forever (actions/actions-runner-controller#4656). With arc-watchdog
//!   the loop must be backed off (at least 10x fewer listener starts over
//!   the same window) and reported as `CrashLoopDetected` naming its cause.
//! - A listener whose session refresh fails dies after its session was
//!   established (reported every ~50 minutes: actions/scaleset#123). That
//!   is not a start-up loop: no `CrashLoopDetected`, no start delay. The
//!   fake's queue tokens live [`QUEUE_TOKEN_TTL`] here, so those
//!   deaths come every 20 s or so.
//!
//! The two legs (without, with) run side by side, each on its own stack.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use arc_watchdog_tests::control_plane::{self, SidecarMode};
use arc_watchdog_tests::fake_github::{Control, FakeGithubConfig, TokenEndpoint};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams};
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, fake_config, finish};
use crate::{Args, CONTROLLER_NS};

/// How long each start-up failure is watched, in both legs.
const WINDOW: Duration = Duration::from_secs(150);
/// How long refreshes fail in the post-session part.
const POST_SESSION_FOR: Duration = Duration::from_secs(120);
/// The fake's message-queue token lifetime: a listener refreshes its
/// session this often (with the default 10 s poll hold: at its second
/// poll), so that failing refreshes kill listeners every 20 s or so.
const QUEUE_TOKEN_TTL: Duration = Duration::from_secs(8);
/// Failed starts in a row that make a loop (`--conflict-threshold`).
const LOOP_AFTER: u64 = 2;
/// Watchdog thresholds: a loop after [`LOOP_AFTER`] failed starts, then a
/// 90 s delay (steady for the loop's first minutes): within [`WINDOW`] the
/// listener starts three times (two failures, one delayed start), and the
/// wait for recovery between the parts stays short.
fn thresholds() -> Vec<String> {
    vec![
        format!("--conflict-threshold={LOOP_AFTER}"),
        "--backoff-initial=90s".to_owned(),
        "--backoff-max=180s".to_owned(),
    ]
}
/// Reasons of the Events a start-up loop produces.
const LOOP_REASONS: [&str; 4] = [
    "CrashLoopDetected",
    "ConflictLoopDetected",
    "ListenerStartDelayed",
    "DryRunStartDelay",
];

/// One start-up failure as one leg saw it.
#[derive(Debug, Default)]
struct Failure {
    /// Listener starts within [`WINDOW`] after the failure began.
    starts: usize,
    /// The failing calls GitHub answered in that window.
    failed_calls: u64,
    /// The cause named by the first new `CrashLoopDetected` (with the watchdog).
    cause: Option<String>,
}

/// The post-session part (with the watchdog only).
#[derive(Debug, Default)]
struct PostSession {
    /// Refreshes that failed (each killed a listener that had a session).
    deaths: u64,
    /// Listener starts meanwhile.
    starts: usize,
    /// Start-up loop Events published meanwhile (there must be none).
    loop_events: Vec<String>,
}

#[derive(Debug, Default)]
struct Leg {
    auth: Failure,
    not_found: Failure,
    post_session: Option<PostSession>,
}

/// The cause in a `CrashLoopDetected` message, `start-up crash loop (<cause>): ...`.
fn crash_loop_cause(event: &str) -> Option<String> {
    let rest = event.split_once("crash loop (")?.1;
    Some(rest.split_once(')')?.0.to_owned())
}

fn crash_loop_events(events: &[String]) -> Vec<&String> {
    events
        .iter()
        .filter(|e| e.starts_with("CrashLoopDetected"))
        .collect()
}

/// Gracefully deletes the running listener pod (ARC recreates it at once):
/// the running listener held an admin token from before the failure, a new
/// one has to fetch its own.
async fn delete_listener_pod(stack: &Stack) -> Result<()> {
    let pod = stack
        .listener_pod()
        .await
        .ok_or_else(|| anyhow!("no listener pod to delete"))?;
    let api: Api<Pod> = Api::namespaced(stack.client.clone(), CONTROLLER_NS);
    api.delete(&pod.name_any(), &DeleteParams::default())
        .await
        .with_context(|| format!("deleting listener pod {}", pod.name_any()))?;
    Ok(())
}

/// Waits until scale set `id` has an active session created at or after
/// `since_ms` (fake clock).
async fn await_session_since(
    stack: &Stack,
    id: i64,
    since_ms: u64,
    timeout: Duration,
) -> Result<()> {
    control_plane::eventually(timeout, "a new listener session", || async {
        let fresh = stack
            .fake
            .stats()
            .session_events
            .iter()
            .any(|e| e.op == "create" && e.status == 200 && e.at_ms >= since_ms);
        let active = stack.fake.session(id).is_some_and(|(_, active)| active);
        (fresh && active).then_some(())
    })
    .await
}

/// Watches a start-up failure that began just now for [`WINDOW`]: listener
/// starts, failing answers of `endpoint` with `status`, and (with the
/// watchdog) the cause of the first `CrashLoopDetected` after the
/// `loops_before` seen before.
async fn watch_failure(
    stack: &Stack,
    endpoint: &str,
    status: u16,
    loops_before: usize,
    watchdog: bool,
) -> Result<Failure> {
    let starts0 = stack.listener_starts();
    let calls0 = stack.fake.stats().responses(endpoint, status);
    let deadline = Instant::now() + WINDOW;
    let mut cause = None;
    // An observation window: it lasts WINDOW whatever happens; the Events
    // are read along the way.
    while Instant::now() < deadline {
        if watchdog && cause.is_none() {
            let events = stack.watchdog_events().await?;
            cause = crash_loop_events(&events)
                .get(loops_before)
                .and_then(|e| crash_loop_cause(e));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(Failure {
        starts: stack.listener_starts().saturating_sub(starts0),
        failed_calls: stack
            .fake
            .stats()
            .responses(endpoint, status)
            .saturating_sub(calls0),
        cause,
    })
}

/// Refreshes fail for [`POST_SESSION_FOR`]: listeners die after their
/// session. Ends healthy (a listener with an active session).
async fn post_session(stack: &Stack, id: i64) -> Result<PostSession> {
    let deaths0 = stack.fake.stats().injected("session_refresh", 404);
    let starts0 = stack.listener_starts();
    stack.fake.control(Control::FailRefresh { count: None });
    // An observation window: the deaths come at the token's pace.
    tokio::time::sleep(POST_SESSION_FOR).await;
    stack.fake.control(Control::ClearFaults);
    let deaths = stack
        .fake
        .stats()
        .injected("session_refresh", 404)
        .saturating_sub(deaths0);
    let starts = stack.listener_starts().saturating_sub(starts0);
    let loop_events = stack
        .watchdog_events()
        .await?
        .into_iter()
        .filter(|e| LOOP_REASONS.iter().any(|r| e.starts_with(r)))
        .collect();
    // A failed refresh forgets the session at once, so an active session
    // now is a listener that lives on; otherwise its successor creates one.
    let timeout = Duration::from_secs(120);
    control_plane::eventually(timeout, "an active session", || async {
        stack
            .fake
            .session(id)
            .is_some_and(|(_, active)| active)
            .then_some(())
    })
    .await?;
    Ok(PostSession {
        deaths,
        starts,
        loop_events,
    })
}

/// One leg: a healthy listener, (with the watchdog) the post-session part,
/// a revoked token, recovery, a deleted scale set.
async fn leg(bins: &Binaries, args: &Args, watchdog: bool, o: &mut Outcome) -> Result<Leg> {
    let tag = if watchdog { "with" } else { "without" };
    let opts = StackOpts {
        watchdog: watchdog.then_some(SidecarMode::Native),
        webhook_args: if watchdog { thresholds() } else { vec![] },
        fake: FakeGithubConfig {
            queue_token_ttl: QUEUE_TOKEN_TTL,
            ..fake_config(args)
        },
        ..StackOpts::native(args)
    };
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        stack.create_runner_set(&opts).await?;
        stack.await_session(Duration::from_secs(180)).await?;
        let id = stack
            .fake
            .scale_sets()
            .first()
            .map(|s| s.id)
            .ok_or_else(|| anyhow!("no scale set registered"))?;
        let mut leg = Leg::default();
        if watchdog {
            leg.post_session = Some(post_session(&stack, id).await?);
        }
        let loops = crash_loop_events(&stack.watchdog_events().await?).len();
        // A revoked PAT: every new listener's first call gets 401.
        stack.fake.control(Control::RevokeToken {
            endpoint: TokenEndpoint::RegistrationToken,
        });
        delete_listener_pod(&stack).await?;
        leg.auth = watch_failure(&stack, "registration_token", 401, loops, watchdog).await?;
        // The token is fixed: the next start gets a session (after the
        // current delay, with the watchdog).
        let mark = stack.fake.now_ms();
        stack.fake.control(Control::ClearFaults);
        await_session_since(&stack, id, mark, Duration::from_secs(300)).await?;
        let loops = crash_loop_events(&stack.watchdog_events().await?).len();
        // The scale set is deleted on GitHub's side: the running listener
        // loses its session, every new one gets 404.
        stack
            .fake
            .control(Control::DeleteScaleSet { scale_set_id: id });
        leg.not_found = watch_failure(&stack, "session_create", 404, loops, watchdog).await?;
        if watchdog {
            o.notes.push(stack.watchdog_events_note(tag).await);
        }
        anyhow::Ok(leg)
    }
    .await;
    finish(stack, o, result.is_err()).await;
    result.with_context(|| format!("{tag} arc-watchdog"))
}

/// `a / b` with `b` at least 1.
fn ratio(a: usize, b: usize) -> f64 {
    a as f64 / b.max(1) as f64
}

/// S7: see the module documentation.
pub(crate) async fn s7(bins: &Binaries, args: &Args) -> Result<Outcome> {
    let mut o = Outcome::new("S7-startup-failure", "0.14.2");
    o.num("window_s", WINDOW.as_secs());
    let (without, with) = o
        .side_by_side(
            async |a| leg(bins, args, false, a).await,
            async |b| leg(bins, args, true, b).await,
        )
        .await;
    let (without, with) = match (without, with) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => {
            for e in [x.err(), y.err()].into_iter().flatten() {
                o.check(false, format!("{e:#}"));
            }
            return Ok(o);
        }
    };
    for (name, wo, w, expected) in [
        ("401", &without.auth, &with.auth, "auth"),
        ("404", &without.not_found, &with.not_found, "not_found"),
    ] {
        let r = ratio(wo.starts, w.starts);
        o.num(&format!("restarts_{name}_without"), wo.starts);
        o.num(&format!("restarts_{name}_with"), w.starts);
        o.num(&format!("ratio_{name}"), format!("{r:.1}"));
        o.num(&format!("github_{name}_without"), wo.failed_calls);
        o.num(&format!("github_{name}_with"), w.failed_calls);
        let cause = w.cause.as_deref().unwrap_or("none");
        o.num(&format!("cause_{name}"), cause);
        o.check(
            r >= 10.0,
            format!(
                "{name}: at least 10x fewer listener starts with arc-watchdog over {}s ({} vs {}: {r:.1}x)",
                WINDOW.as_secs(),
                wo.starts,
                w.starts
            ),
        );
        o.check(
            cause == expected,
            format!("{name}: CrashLoopDetected names the cause {expected:?} (saw {cause:?})"),
        );
    }
    match &with.post_session {
        Some(p) => {
            o.num("post_session_deaths", p.deaths);
            o.num("post_session_starts", p.starts);
            o.num("post_session_loop_events", p.loop_events.len());
            // More deaths in a row than make a loop: a detector that took
            // them for failed starts would have reported one.
            let enough = LOOP_AFTER + 1;
            o.check(
                p.deaths >= enough && p.starts >= 3,
                format!(
                    "listeners died after their session, at least {enough} times ({} failed refreshes, {} starts in {}s)",
                    p.deaths,
                    p.starts,
                    POST_SESSION_FOR.as_secs()
                ),
            );
            o.check(
                p.loop_events.is_empty(),
                format!(
                    "deaths after the session are no start-up loop: no loop or start-delay Event ({:?})",
                    p.loop_events
                ),
            );
        }
        None => o.check(false, "the post-session part did not run"),
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_read_from_the_crash_loop_message() {
        let e = "CrashLoopDetected start-up crash loop (auth): 2 runs within 10m died before getting a session (causes: auth, auth); GitHub rejected";
        assert_eq!(crash_loop_cause(e).as_deref(), Some("auth"));
        assert_eq!(crash_loop_cause("ListenerRecovered ok"), None);
    }
}
