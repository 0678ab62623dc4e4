use std::time::Duration;

use anyhow::{Result, anyhow};
use arc_watchdog_tests::control_plane::{self, Webhook};
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::stack::{Binaries, Stack, StackOpts, conclude};
use crate::{Args, CONTROLLER_NS, UNINJECTED_REASON, status};

/// S6: the webhook is down when ARC creates the listener: the pod is created
/// without the watchdog (failurePolicy Ignore) and the listener works.
pub(crate) async fn s6(bins: &Binaries, args: &Args) -> Result<Outcome> {
    let mut o = Outcome::new("S6-webhook-down", "0.14.2");
    let opts = StackOpts::native(args);
    let stack = Stack::start(bins, &opts).await?;
    let result = async {
        if let Some(wh) = &stack.webhook {
            wh.stop();
        }
        stack.create_runner_set(&opts).await?;
        let t = stack.await_session(Duration::from_secs(120)).await?;
        o.num("session_after_s", format!("{t:.1}"));
        let pod = stack.listener_pod().await.ok_or_else(|| anyhow!("no listener pod"))?;
        let injected = control_plane::watchdog_container(&pod).is_some();
        o.check(!injected, "listener pod created without the watchdog while the webhook is down");
        let shown = status::await_row(
            &bins.watchdog,
            stack.cp.kubeconfig(),
            Duration::from_secs(60),
            "status to show the listener without the watchdog",
            |r| r["watchdog"] == "none" && status::state(r) == "healthy",
        )
        .await;
        o.check(
            shown.is_ok(),
            "status shows the listener running without the watchdog (watchdog none, healthy)",
        );

        // The webhook comes back (same registration, its own identity): it
        // reports the listener that runs without the watchdog.
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let kubeconfig = stack.cp.webhook_kubeconfig().await?;
        let back = Webhook::start(&stack.cp, "webhook-back", &kubeconfig, &[]).await?;
        let t0 = Instant::now();
        let events: Api<EventV1> = Api::namespaced(stack.client.clone(), CONTROLLER_NS);
        let reported = control_plane::eventually(
            Duration::from_secs(60),
            "the ListenerNotInjected Event on the uninjected listener",
            || {
                let events = events.clone();
                let uid = uid.clone();
                async move {
                    let list = events.list(&ListParams::default()).await.ok()?;
                    list.items.into_iter().find(|e| {
                        e.reason.as_deref() == Some(UNINJECTED_REASON)
                            && e.regarding.as_ref().and_then(|r| r.uid.as_deref())
                                == Some(uid.as_str())
                    })
                }
            },
        )
        .await;
        back.stop();
        match reported {
            Ok(event) => {
                o.num("reported_after_s", format!("{:.1}", t0.elapsed().as_secs_f64()));
                o.check(
                    event.type_.as_deref() == Some("Warning"),
                    "the webhook, back, reports the uninjected listener (Warning ListenerNotInjected)",
                );
            }
            Err(e) => o.check(false, format!("the webhook, back, reports the uninjected listener: {e:#}")),
        }
        anyhow::Ok(())
    }
    .await;
    conclude(stack, &mut o, result, "").await;
    Ok(o)
}
