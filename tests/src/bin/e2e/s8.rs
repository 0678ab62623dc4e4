use std::time::Duration;

use anyhow::{Result, anyhow};
use arc_watchdog_core::names;
use arc_watchdog_core::reasons::Reason;
use arc_watchdog_tests::control_plane;
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, conclude};
use crate::{Args, CONTROLLER_NS};

/// An image no registry serves: the process kubelet answers ErrImagePull,
/// as a kubelet does when the registry is down or the pull secret missing.
const UNPULLABLE: &str = "registry.invalid/arc-watchdog/arc-watchdog:unpullable";
/// The webhook's `--blocked-after` here (2m by default).
const BLOCKED_AFTER: &str = "30s";
/// The promise: no listener is kept from running by arc-watchdog longer.
const GOAL: Duration = Duration::from_secs(300);

/// S8: the watchdog's image cannot be pulled. Its native sidecar would hold
/// the listener forever; the webhook releases the listener (injection
/// suspended for it, the held pod evicted) and ARC's next pod runs without
/// the watchdog.
pub(crate) async fn s8(bins: &Binaries, args: &Args) -> Result<Outcome> {
    let mut o = Outcome::new("S8-watchdog-unpullable", "0.14.2");
    let mut opts = StackOpts::native(args);
    opts.webhook_args = vec![
        format!("--watchdog-image={UNPULLABLE}"),
        format!("--blocked-after={BLOCKED_AFTER}"),
    ];
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        let t0 = Instant::now();
        stack.create_runner_set(&opts).await?;
        stack.await_session(GOAL).await?;
        let took = t0.elapsed();
        o.num("session_after_s", format!("{:.1}", took.as_secs_f64()));
        o.check(
            took <= GOAL,
            format!(
                "the listener has its session {:.0} s after the runner set was created (at most {} s), though the watchdog's image cannot be pulled",
                took.as_secs_f64(),
                GOAL.as_secs()
            ),
        );
        let pod = stack.listener_pod().await.ok_or_else(|| anyhow!("no listener pod"))?;
        let suspended = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(names::ANNOTATION_POD_SUSPENDED));
        o.check(
            control_plane::watchdog_container(&pod).is_none() && suspended,
            "the listener pod runs without the watchdog, marked injection-suspended",
        );
        let events: Api<EventV1> = Api::namespaced(stack.client.clone(), CONTROLLER_NS);
        let released = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .any(|e| {
                e.reason.as_deref() == Some(Reason::InjectionSuspended.as_str())
                    && e.type_.as_deref() == Some("Warning")
            });
        o.check(released, "the webhook says so: a Warning InjectionSuspended Event");
        anyhow::Ok(())
    }
    .await;
    conclude(stack, &mut o, result, "").await;
    Ok(o)
}
