use std::time::Duration;

use anyhow::Result;
use arc_watchdog_core::reasons::Reason;
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, conclude};
use crate::{Args, CONTROLLER_NS};

/// How long the listener may wait for a watchdog the kubelet runs as a
/// plain init container: its `--step-aside-after` (60 s) after the start
/// gate opened, plus the pod's start.
const BOUND: Duration = Duration::from_secs(150);

/// S9: a kubelet without native sidecars (1.28 or older) and a webhook
/// told `--sidecar-mode=native`: the watchdog runs as a plain init
/// container, which would hold the listener forever. It steps aside
/// (exits 0, `WatchdogSteppedAside`), and the listener starts.
pub(crate) async fn s9(bins: &Binaries, args: &Args) -> Result<Outcome> {
    let mut o = Outcome::new("S9-old-kubelet", "0.14.2");
    let opts = StackOpts {
        native_sidecars: false,
        ..StackOpts::native(args)
    };
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        let t0 = Instant::now();
        stack.create_runner_set(&opts).await?;
        stack.await_session(BOUND).await?;
        let took = t0.elapsed();
        o.num("session_after_s", format!("{:.1}", took.as_secs_f64()));
        o.check(
            took <= BOUND,
            format!(
                "the listener has its session {:.0} s after the runner set was created, though the kubelet runs the watchdog as a plain init container",
                took.as_secs_f64()
            ),
        );
        let events: Api<EventV1> = Api::namespaced(stack.client.clone(), CONTROLLER_NS);
        let stepped = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .any(|e| e.reason.as_deref() == Some(Reason::WatchdogSteppedAside.as_str()));
        o.check(stepped, "the watchdog says so: a WatchdogSteppedAside Event");
        anyhow::Ok(())
    }
    .await;
    conclude(stack, &mut o, result, "").await;
    Ok(o)
}
