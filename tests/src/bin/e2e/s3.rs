//! S3: a dead listener in a live pod. The listener is killed (SIGKILL, as an
//! OOM kill) while a user's own sidecar keeps its pod Running. ARC 0.9.2 and
//! older reconcile on the pod phase alone and never replace it; later
//! controllers delete a pod whose `listener` container terminated. With
//! arc-watchdog (classic sidecar: the pod lives on after the listener dies)
//! the pod is evicted within seconds and the stock controller recreates it.

use std::time::Duration;

use anyhow::Result;
use arc_watchdog_tests::control_plane::{self, SidecarMode};
use arc_watchdog_tests::fake_github::FakeGithubConfig;
use serde_json::json;
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, conclude, fake_config};
use crate::{Args, IDLE_IMAGE};

/// The newest ARC whose controller acts on the pod phase alone.
const LAST_PHASE_ONLY: &str = "0.9.2";

/// What a version's controller does with a dead listener in a live pod.
fn replaces_by_itself(version: &str) -> bool {
    crate::version_key(version) > crate::version_key(LAST_PHASE_ONLY)
}

/// One leg: kill the listener, watch what replaces it.
async fn leg(bins: &Binaries, opts: StackOpts, tag: &str, o: &mut Outcome) -> Result<()> {
    let expect_replaced_by_arc = replaces_by_itself(opts.version);
    let with_watchdog = opts.watchdog.is_some();
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        let (name, uid) = stack.healthy_listener(&opts).await?;
        let killed_at = Instant::now();
        stack.kubelet.signal(&name, "listener", "KILL").await?;
        // The kill must have ended the listener: its exit is what every
        // later check is about.
        let exited = control_plane::eventually(Duration::from_secs(10), "the listener's exit", || async {
            stack.kubelet.events().into_iter().find(|e| {
                e.uid == uid && e.container.as_deref() == Some("listener") && e.what.starts_with("exited")
            })
        })
        .await;
        o.check(exited.is_ok(), format!("{tag}: the killed listener exited"));
        let window = Duration::from_secs(45);
        let replaced = stack.await_new_listener(&uid, killed_at, window, "a new listener pod").await;
        let events = stack.kubelet.events();
        let starts = events
            .iter()
            .filter(|e| e.uid == uid && e.container.as_deref() == Some("listener") && e.what.starts_with("started"))
            .count();
        let restarts_in_place = starts.saturating_sub(1);
        o.num(&format!("{tag}_restarts_in_place"), restarts_in_place);
        o.check(restarts_in_place == 0, format!("{tag}: the listener was not restarted in place (restartPolicy Never)"));
        // Evidence of an eviction by arc-watchdog: its own log line (the
        // ListenerEvicted Event is reported separately: it can be lost when
        // the watchdog is stopped right after evicting).
        let evicted = stack.watchdog_log_count("evicting the own pod", Some(&uid))?;
        o.num(&format!("{tag}_watchdog_evictions"), evicted);
        o.num(&format!("{tag}_eviction_events"), stack.evictions().await?);
        match &replaced {
            Ok(t) => o.num(&format!("{tag}_recreated_after_s"), format!("{t:.1}")),
            Err(_) => o.num(&format!("{tag}_recreated_after_s"), "never"),
        }
        if with_watchdog && !expect_replaced_by_arc {
            let killing = events.iter().find(|e| e.uid == uid && e.what.starts_with("killing")).map(|e| e.at);
            match (killing, exited.as_ref().ok().map(|e| e.at)) {
                (Some(k), Some(x)) if evicted > 0 => {
                    let s = k.duration_since(x).as_secs_f64();
                    o.num(&format!("{tag}_evicted_after_exit_s"), format!("{s:.1}"));
                    o.check(
                        (0.0..=5.0).contains(&s),
                        format!("{tag}: arc-watchdog evicted the pod within 5 s of the listener's exit ({s:.1}s)"),
                    );
                }
                _ => o.check(false, format!("{tag}: arc-watchdog evicted the pod after the listener's exit")),
            }
        }
        if with_watchdog || expect_replaced_by_arc {
            o.check(replaced.is_ok(), format!("{tag}: the stock controller recreated the listener pod"));
        } else {
            o.check(
                replaced.is_err(),
                format!("{tag}: without arc-watchdog ARC {} never replaces the pod (watched {}s)", opts.version, window.as_secs()),
            );
        }
        if with_watchdog {
            o.notes.push(stack.watchdog_events_note(tag).await);
            // What the watchdog relies on, on every version: a listener pod
            // evicted through the Eviction API is recreated by the stock
            // controller.
            if replaced.is_ok() {
                match stack.evict_listener_and_await_new().await {
                    Ok(t) => o.num(&format!("{tag}_evicted_pod_recreated_after_s"), format!("{t:.1}")),
                    Err(e) => o.check(false, format!("{tag}: an evicted listener pod is recreated: {e:#}")),
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    conclude(stack, o, result, tag).await;
    Ok(())
}

/// S3 on one ARC version: without arc-watchdog, then with it.
pub(crate) async fn s3(bins: &Binaries, args: &Args, version: &'static str) -> Result<Outcome> {
    let mut o = Outcome::new("S3-dead-listener", version);
    o.num("arc_replaces_by_itself", replaces_by_itself(version));
    // The killed listener leaves its session behind: let it expire quickly,
    // so that the recreated listener is healthy (S2 covers long expiries).
    let fake = FakeGithubConfig {
        stale_session_ttl: Duration::from_secs(3),
        ..fake_config(args)
    };
    // A user's own sidecar keeps the pod Running after the listener died.
    let user_sidecar = json!({"spec": {"containers": [
        {"name": "listener"},
        {"name": "log-shipper", "image": IDLE_IMAGE, "args": ["infinity"]},
    ]}});
    let without = StackOpts {
        version,
        watchdog: None,
        listener_template: Some(user_sidecar.clone()),
        fake,
        ..StackOpts::native(args)
    };
    let with = StackOpts {
        watchdog: Some(SidecarMode::Classic),
        ..without.clone()
    };
    let (ra, rb) = o
        .side_by_side(
            async |a| leg(bins, without, "without", a).await,
            async |b| leg(bins, with, "with", b).await,
        )
        .await;
    ra?;
    rb?;
    Ok(o)
}
