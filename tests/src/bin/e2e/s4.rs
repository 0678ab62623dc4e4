use anyhow::Result;
use arc_watchdog_tests::control_plane;
use arc_watchdog_tests::fake_github::Control;
use tokio::time::Instant;

use crate::Args;
use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, conclude, session_creates};

/// S4: another owner holds the session forever (two clusters, one scale set
/// name). Short thresholds so that the capped backoff is reached in minutes.
pub(crate) async fn s4(bins: &Binaries, args: &Args) -> Result<Outcome> {
    let mut o = Outcome::new("S4-permanent-conflict", "0.14.2");
    let thresholds = [
        "--conflict-threshold=3",
        "--backoff-initial=5s",
        // The defaults' proportion: steady for half of the capped delay.
        "--backoff-steady-for=10s",
        "--backoff-max=20s",
        "--duplicate-after-caps=2",
        "--eviction-budget=3",
    ];
    let opts = StackOpts {
        webhook_args: thresholds.iter().map(|s| (*s).to_owned()).collect(),
        ..StackOpts::native(args)
    };
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        stack.fake.control(Control::InjectSession {
            scale_set_id: 1,
            owner: "other-cluster-listener".into(),
            ttl_ms: None,
        });
        stack.create_runner_set(&opts).await?;
        let window = args.permanent_for;
        let t0 = Instant::now();
        let duplicate = control_plane::eventually(window, "DuplicateScaleSetSuspected", || async {
            stack
                .watchdog_events()
                .await
                .ok()?
                .iter()
                .any(|e| e.starts_with("DuplicateScaleSetSuspected"))
                .then(|| t0.elapsed().as_secs_f64())
        })
        .await;
        let st = stack.fake.stats();
        let (_, conflicts) = session_creates(&st);
        let evictions = stack.watchdog_log_count("evicting the own pod", None)?;
        o.num("eviction_events", stack.evictions().await?);
        o.num("observed_s", format!("{:.0}", t0.elapsed().as_secs_f64()));
        o.num("session_conflicts", conflicts);
        o.num("listener_starts", stack.listener_starts());
        o.num("evictions", evictions);
        o.check(
            evictions <= 3,
            format!("evictions within the budget of 3 ({evictions})"),
        );
        match duplicate {
            Ok(t) => o.num("duplicate_suspected_after_s", format!("{t:.0}")),
            Err(e) => o.check(false, format!("DuplicateScaleSetSuspected raised: {e:#}")),
        }
        o.notes.push(stack.watchdog_events_note("").await);
        anyhow::Ok(())
    }
    .await;
    conclude(stack, &mut o, result, "").await;
    Ok(o)
}
