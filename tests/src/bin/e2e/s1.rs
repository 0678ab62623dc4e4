use std::time::Duration;

use anyhow::{Result, anyhow};
use kube::ResourceExt as _;

use crate::Args;
use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, conclude, session_creates};

/// S1: healthy listener; the watchdog never acts.
pub(crate) async fn s1(bins: &Binaries, args: &Args) -> Result<Outcome> {
    let mut o = Outcome::new("S1-healthy", "0.14.2");
    let opts = StackOpts::native(args);
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        stack.create_runner_set(&opts).await?;
        let t = stack.await_session(Duration::from_secs(120)).await?;
        o.num("session_after_s", format!("{t:.1}"));
        let pod = stack
            .listener_pod()
            .await
            .ok_or_else(|| anyhow!("no listener pod"))?;
        let injected = pod.spec.as_ref().is_some_and(|s| {
            s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == "arc-watchdog")
        });
        o.check(
            injected,
            "listener pod injected with the native arc-watchdog sidecar",
        );
        let uid0 = pod.uid();
        // An observation window, not synchronisation: nothing may happen in it.
        tokio::time::sleep(args.healthy_for).await;
        let st = stack.fake.stats();
        let (ok, conflicts) = session_creates(&st);
        o.num("session_calls", ok + conflicts);
        o.num("polls", st.calls("message_get"));
        let pod_now = stack.listener_pod().await;
        o.check(
            pod_now.as_ref().and_then(kube::ResourceExt::uid) == uid0,
            "same listener pod throughout (no eviction)",
        );
        o.check(
            ok == 1 && conflicts == 0,
            format!("exactly one session created ({ok} ok, {conflicts} conflicts)"),
        );
        o.check(st.calls("message_get") >= 2, "listener keeps polling");
        let evictions = stack.watchdog_log_count("evicting the own pod", None)?;
        o.num("evictions", evictions);
        o.check(evictions == 0, "no eviction (watchdog log)");
        // Nothing to report about a healthy listener: no conflict, loop,
        // start delay, crash or eviction Event.
        let events = stack.watchdog_events().await?;
        o.num("watchdog_events", events.len());
        o.check(
            events.is_empty(),
            format!("the watchdog published no Event about a healthy listener ({events:?})"),
        );
        anyhow::Ok(())
    }
    .await;
    conclude(stack, &mut o, result, "").await;
    Ok(o)
}
