//! The kubelet's pod watch: binds unscheduled pods to its node (the
//! scheduler's job), hands every change of a pod bound to it to that pod's
//! task, and starts one task per new pod.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

use super::lifecycle::run_pod;
use super::{Ctx, Registry, lock};

pub(super) async fn watch_pods(ctx: Ctx, registry: Arc<Mutex<Registry>>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let mut stream = watcher::watcher(pods, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet: pod watch error (retrying)");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                on_pod(&ctx, &registry, p).await
            }
            watcher::Event::Delete(p) => {
                let uid = p.uid().unwrap_or_default();
                if let Some(tx) = lock(&registry).pods.remove(&uid) {
                    let _ = tx.send(None);
                }
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

async fn on_pod(ctx: &Ctx, registry: &Arc<Mutex<Registry>>, pod: Pod) {
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let node_name = spec.node_name.clone().unwrap_or_default();
    if node_name.is_empty() {
        let default_scheduler = spec
            .scheduler_name
            .as_deref()
            .is_none_or(|s| s == "default-scheduler");
        if pod.metadata.deletion_timestamp.is_none() && default_scheduler {
            let ns = pod.namespace().unwrap_or_default();
            match ctx.node.bind(&ns, &pod.name_any()).await {
                Ok(()) => ctx.event(&pod, None, "bound".into()),
                Err(e) => tracing::debug!(error = %e, "kubelet: bind failed"),
            }
        }
        return;
    }
    if node_name != ctx.node.name() {
        return;
    }
    let mut reg = lock(registry);
    if let Some(tx) = reg.pods.get(&uid) {
        let _ = tx.send(Some(pod));
        return;
    }
    if pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
        && pod.metadata.deletion_timestamp.is_none()
    {
        // A finished pod from before this kubelet started: nothing to run.
        return;
    }
    let (tx, rx) = watch::channel(Some(pod));
    reg.pods.insert(uid, tx);
    let ctx = ctx.clone();
    let task = tokio::spawn(async move {
        let pod0 = rx.borrow().clone();
        if let Err(e) = run_pod(ctx.clone(), rx).await
            && let Some(p) = pod0
        {
            ctx.event(&p, None, format!("failed {e:#}"));
        }
    });
    reg.tasks.retain(|t| !t.is_finished());
    reg.tasks.push(task);
}
