//! S5: the API server goes away mid-stream (a control-plane upgrade) while the
//! real ARC controller, a healthy listener and its watchdog run.
//!
//! The real listener needs the API server once per message poll (it patches
//! its EphemeralRunnerSet after every poll, even an empty one) and exits when
//! that fails. GitHub holds a poll for about 50 s, so the scenario times its
//! outages against the polls:
//! 1. a restart inside one poll: nothing may happen;
//! 2. an outage longer than the watchdog's `--fail-open-grace`, inside one
//!    poll: the listener keeps its session and pod, the watchdog fails open
//!    and closes again afterwards, and evicts nothing;
//! 3. an outage across the end of a poll: the listener exits (ARC's own
//!    behaviour), ARC recreates the pod once the API server is back, and the
//!    watchdog neither evicts nor reports a loop: a listener that dies after
//!    it got its session is no start-up failure.

use std::time::Duration;

use anyhow::{Context as _, Result};
use arc_watchdog::names;
use arc_watchdog_tests::control_plane;
use arc_watchdog_tests::fake_github::FakeGithubConfig;
use kube::ResourceExt as _;
use tokio::time::Instant;

use crate::Args;
use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, conclude, fake_config, session_creates};

/// GitHub's hold of a message poll.
const POLL_HOLD: Duration = Duration::from_secs(50);
/// The watchdog's `--fail-open-grace` (its default; the webhook does not
/// pass one on).
const GRACE: Duration = Duration::from_secs(20);
/// The long outage: clearly longer than the grace, shorter than a poll.
const LONG_OUTAGE: Duration = Duration::from_secs(32);
const FAIL_OPEN: &str = "arc_watchdog_fail_open";

/// Waits until the watchdog answers `/readyz` 200 (it sees its pod, its log
/// and its Lease).
/// On a timeout the error quotes the last answer, which names the failing
/// API operation.
async fn await_ready(stack: &Stack, within: Duration, what: &str) -> Result<f64> {
    let t0 = Instant::now();
    let last = std::sync::Mutex::new(String::new());
    let ready = control_plane::eventually(within, what, || async {
        let answer = stack.watchdog_get(names::PATH_READYZ).await;
        let ready = matches!(answer, Ok((200, _)));
        *last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = match answer {
            Ok((code, body)) => format!("{code} {}", body.trim()),
            Err(e) => format!("{e:#}"),
        };
        ready.then_some(())
    })
    .await;
    let last = last
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ready.with_context(|| format!("last /readyz: {last}"))?;
    Ok(t0.elapsed().as_secs_f64())
}

/// The line the listener writes as it starts a message poll (after the
/// previous poll's EphemeralRunnerSet patch).
const POLL_STARTS: &str = "Getting next message";

/// Waits until the listener starts its next message poll; returns when.
async fn await_next_poll(stack: &Stack) -> Result<Instant> {
    let polls = stack.container_log_count("listener", POLL_STARTS, None)?;
    control_plane::eventually(
        POLL_HOLD + Duration::from_secs(30),
        "the next message poll",
        || async {
            (stack
                .container_log_count("listener", POLL_STARTS, None)
                .ok()?
                > polls)
                .then(Instant::now)
        },
    )
    .await
}

pub(crate) async fn s5(bins: &Binaries, args: &Args) -> Result<Outcome> {
    let mut o = Outcome::new("S5-apiserver-restart", "0.14.2");
    let opts = StackOpts {
        fake: FakeGithubConfig {
            poll_hold: POLL_HOLD,
            ..fake_config(args)
        },
        ..StackOpts::native(args)
    };
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        let (name, uid) = stack.healthy_listener(&opts).await?;
        await_ready(&stack, Duration::from_secs(60), "the watchdog ready before the outages").await?;
        let sessions_before = session_creates(&stack.fake.stats()).0;

        // 1. A restart inside one poll.
        await_next_poll(&stack).await?;
        let outage = stack.cp.restart_apiserver().await?;
        o.num("restart_outage_s", format!("{:.1}", outage.as_secs_f64()));
        let t = await_ready(&stack, Duration::from_secs(90), "the watchdog ready after the restart").await?;
        o.num("restart_ready_again_after_s", format!("{t:.1}"));

        // 2. A long outage inside one poll: the watchdog fails open within
        // its grace, and closes again once the API server is back.
        let poll_at = await_next_poll(&stack).await?;
        stack.cp.stop_apiserver().await?;
        let t0 = Instant::now();
        let opened = control_plane::eventually(GRACE + Duration::from_secs(10), "the watchdog failing open", || async {
            (stack.watchdog_metric(FAIL_OPEN).await.ok()? == 1.0).then(|| t0.elapsed().as_secs_f64())
        })
        .await;
        match &opened {
            Ok(t) => o.num("fail_open_after_s", format!("{t:.1}")),
            Err(e) => o.check(false, format!("the watchdog fails open during the long outage: {e:#}")),
        }
        if let Some(rest) = LONG_OUTAGE.checked_sub(t0.elapsed()) {
            // The outage itself: nothing to wait for but the clock.
            tokio::time::sleep(rest).await;
        }
        stack.cp.start_apiserver(Duration::from_secs(90)).await?;
        o.num("long_outage_s", format!("{:.1}", t0.elapsed().as_secs_f64()));
        o.check(
            poll_at.elapsed() < POLL_HOLD,
            format!("the long outage ended inside the poll ({:.1}s after it began)", poll_at.elapsed().as_secs_f64()),
        );
        let t1 = Instant::now();
        let closed = control_plane::eventually(Duration::from_secs(90), "the watchdog closing again", || async {
            (stack.watchdog_metric(FAIL_OPEN).await.ok()? == 0.0).then(|| t1.elapsed().as_secs_f64())
        })
        .await;
        match &closed {
            Ok(t) => o.num("fail_open_closed_after_s", format!("{t:.1}")),
            Err(e) => o.check(false, format!("the watchdog stops failing open after the outage: {e:#}")),
        }
        await_ready(&stack, Duration::from_secs(90), "the watchdog ready after the long outage").await?;
        let same = stack.listener_pod().await.and_then(|p| p.uid()) == Some(uid.clone());
        o.check(same, "the same listener pod through outages inside a poll");
        let sessions_after = session_creates(&stack.fake.stats()).0;
        o.check(
            sessions_after == sessions_before,
            format!("the listener kept its session ({sessions_before} created before, {sessions_after} after)"),
        );

        // 3. An outage across the end of a poll: the listener exits.
        let poll_at = await_next_poll(&stack).await?;
        // Positions the outage in time: it begins 15 s before the poll ends.
        tokio::time::sleep(POLL_HOLD.saturating_sub(Duration::from_secs(15))).await;
        stack.cp.stop_apiserver().await?;
        let died = control_plane::eventually(Duration::from_secs(40), "the listener's exit", || async {
            stack.kubelet.events().into_iter().find(|e| {
                e.uid == uid && e.container.as_deref() == Some("listener") && e.what.starts_with("exited")
            })
        })
        .await;
        let back = Instant::now();
        stack.cp.start_apiserver(Duration::from_secs(90)).await?;
        match &died {
            Ok(e) => o.num("listener_exit_at_poll_end", e.what.clone()),
            Err(_) => o.num("listener_exit_at_poll_end", "none"),
        }
        o.notes.push(format!(
            "outage from {:.0}s into a poll: the listener {}",
            poll_at.elapsed().as_secs_f64() - back.elapsed().as_secs_f64(),
            if died.is_ok() { "exited (it patches its EphemeralRunnerSet after every poll)" } else { "lived on" }
        ));
        let recovered = control_plane::eventually(Duration::from_secs(120), "a listener with a session again", || async {
            let st = stack.fake.stats();
            let ok = st.responses("session_create", 200) > sessions_before || died.is_err();
            let active = stack.fake.scale_sets().first().and_then(|s| stack.fake.session(s.id)).is_some_and(|(_, a)| a);
            (ok && active).then(|| back.elapsed().as_secs_f64())
        })
        .await;
        match recovered {
            Ok(t) => o.num("session_again_after_s", format!("{t:.1}")),
            Err(e) => o.check(false, format!("a listener has a session again after the outage: {e:#}")),
        }

        let evictions = stack.watchdog_log_count("evicting the own pod", None)?;
        o.num("evictions", evictions);
        o.check(evictions == 0, "no eviction through the outages");
        let events = stack.watchdog_events().await?;
        o.check(
            !events.iter().any(|e| {
                e.starts_with("ListenerEvicted") || e.contains("LoopDetected") || e.starts_with("ListenerStartDelayed")
            }),
            format!("no loop, start delay or eviction reported ({events:?})"),
        );
        o.notes.push(format!("watchdog events: {events:?}"));
        if died.is_err() {
            // The listener lived through all three: ARC's controller still
            // has to show that it watches its pods again.
            stack.kubelet.signal(&name, "listener", "KILL").await?;
        }
        let t2 = Instant::now();
        let replaced = stack
            .await_new_listener(&uid, t2, Duration::from_secs(60), "ARC replacing the dead listener")
            .await;
        match replaced {
            Ok(t) => o.num("arc_replaced_after_s", format!("{t:.1}")),
            Err(e) => o.check(false, format!("ARC's controller replaces a dead listener after the outages: {e:#}")),
        }
        anyhow::Ok(())
    }
    .await;
    conclude(stack, &mut o, result, "").await;
    Ok(o)
}
