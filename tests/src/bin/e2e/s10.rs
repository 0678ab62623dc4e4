//! S10: the node under the listener is lost, as a powered-off machine is.
//!
//! Two nodes; the listener runs on the first. That node loses power: its
//! processes die with it (SIGKILL, no shutdown) and its kubelet writes
//! nothing more. What follows is what the control plane does to a node
//! that stopped reporting, done here by the scenario since the stack's
//! kube-controller-manager runs no node lifecycle controller:
//! - the node lifecycle controller sets the node's Ready condition to
//!   `Unknown` (`NodeStatusUnknown`), taints it
//!   `node.kubernetes.io/unreachable` (NoSchedule, NoExecute) and marks its
//!   pods not Ready. It does so 40 to 50 s after the last heartbeat; here at
//!   once.
//! - the taint eviction controller adds the `DisruptionTarget` condition
//!   (`DeletionByTaintManager`) and deletes each pod with the pod's own
//!   grace period (ARC's listener: 60 s), once the pod's toleration of the
//!   taint has run out (300 s by default); here at once.
//!
//! No kubelet confirms the deletion, so the pod stays Terminating. Without
//! arc-watchdog ARC's controller sees a pod whose `listener` container still
//! reads Running and makes no new one: the scale set stays without a
//! listener. With arc-watchdog the webhook reports it (`ListenerMissing`,
//! `terminating_on_not_ready_node`) and, with the opt-in
//! `--delete-stuck-terminating-after`, force-deletes the stuck pod; ARC's
//! next listener pod runs on the healthy node and gets its session.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use arc_watchdog_core::reasons::{Missing, Reason};
use arc_watchdog_tests::control_plane;
use arc_watchdog_tests::kubelet::process_group_alive;
use arc_watchdog_tests::node;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event as EventV1;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::stack::{Binaries, NODE, Stack, StackOpts, conclude, session_creates};
use crate::{Args, CONTROLLER_NS, RUNNER_NS, SCALE_SET, status};

/// The node that stays healthy.
const NODE_B: &str = "e2e-node-b";
/// The webhook's `--report-missing-after` here (5 min by default).
const REPORT_AFTER: Duration = Duration::from_secs(20);
/// The webhook's `--delete-stuck-terminating-after` here (off by default).
const DELETE_STUCK_AFTER: Duration = Duration::from_secs(20);
/// Without arc-watchdog, how long past the end of the deletion's grace
/// period the scale set is watched for a new listener.
const WATCH_PAST_GRACE: Duration = Duration::from_secs(120);
/// From the force deletion to the new listener's session at most: ARC's
/// new pod, the kubelet's start latency, the listener's start.
const RECOVERY: Duration = Duration::from_secs(90);
const STUCK_DELETIONS: &str = "arc_watchdog_webhook_stuck_pod_deletions_total";

/// S10 on ARC 0.14.2: without arc-watchdog, then with it, side by side.
pub(crate) async fn s10(bins: &Binaries, args: &Args) -> Result<Outcome> {
    let version = "0.14.2";
    let mut o = Outcome::new("S10-node-lost", version);
    let without = StackOpts {
        watchdog: None,
        ..StackOpts::native(args)
    };
    let with = StackOpts {
        webhook_args: vec![
            format!("--report-missing-after={}s", REPORT_AFTER.as_secs()),
            format!(
                "--delete-stuck-terminating-after={}s",
                DELETE_STUCK_AFTER.as_secs()
            ),
            "--missing-actions-dry-run=false".to_owned(),
        ],
        ..StackOpts::native(args)
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

/// The lost listener pod and when things happened to it.
struct Lost {
    name: String,
    uid: String,
    /// The power went off.
    at: Instant,
    /// The pod was deleted.
    deleted: Instant,
    /// The deletion's grace period ended (the pod's `deletionTimestamp`).
    grace_end: Instant,
    grace: Duration,
    /// Sessions the fake GitHub had handed out before.
    sessions_before: u64,
}

async fn leg(bins: &Binaries, opts: StackOpts, tag: &str, o: &mut Outcome) -> Result<()> {
    let mut stack = Stack::start(bins, &opts).await?;
    let result = async {
        let (name, uid) = stack.healthy_listener(&opts).await?;
        let pod = pod_by_uid(&stack, &name, &uid)
            .await?
            .ok_or_else(|| anyhow!("listener pod {name} is gone"))?;
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        o.check(
            node.as_deref() == Some(NODE),
            format!("{tag}: the listener runs on node {NODE} ({node:?})"),
        );
        // The second node joins once the listener is bound to the first.
        stack.add_node(bins, &opts, NODE_B).await?;
        let lost = lose_node(&stack, &name, &uid, tag, o).await?;
        if opts.watchdog.is_some() {
            with_watchdog(&stack, bins, &lost, o).await
        } else {
            without_watchdog(&stack, &lost, o).await
        }
    }
    .await;
    conclude(stack, o, result, tag).await;
    Ok(())
}

/// The pod `name`, if it is still the generation `uid`.
async fn pod_by_uid(stack: &Stack, name: &str, uid: &str) -> Result<Option<Pod>> {
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), CONTROLLER_NS);
    Ok(pods
        .get_opt(name)
        .await
        .with_context(|| format!("reading pod {name}"))?
        .filter(|p| p.metadata.uid.as_deref() == Some(uid)))
}

/// Whether the pod's `listener` container still reads Running: nothing
/// reported its death.
fn listener_reads_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.name == "listener")
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// Powers node [`NODE`] off, then does what the node lifecycle and taint
/// eviction controllers do about it (see the module documentation).
async fn lose_node(
    stack: &Stack,
    name: &str,
    uid: &str,
    tag: &str,
    o: &mut Outcome,
) -> Result<Lost> {
    let sessions_before = session_creates(&stack.fake.stats()).0;
    let at = Instant::now();
    let groups = stack.kubelet.power_off().await;
    let stopped = control_plane::eventually(
        Duration::from_secs(10),
        "the lost node's processes to end",
        || async {
            groups
                .iter()
                .all(|g| !process_group_alive(*g))
                .then_some(())
        },
    )
    .await;
    o.check(
        !groups.is_empty() && stopped.is_ok(),
        format!(
            "{tag}: the power-off ended the node's {} container processes",
            groups.len()
        ),
    );

    // The node lifecycle controller, once the heartbeats stop.
    node::mark_not_ready(&stack.client, NODE).await?;
    let now = Timestamp::now().to_string();
    let nodes: Api<Node> = Api::all(stack.client.clone());
    nodes
        .patch(
            NODE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [
                {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": now},
            ]}})),
        )
        .await
        .context("tainting the node")?;
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), CONTROLLER_NS);
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now},
        ]}})),
    )
    .await
    .context("marking the pod not Ready")?;

    // The taint eviction controller, once the toleration ran out.
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": now,
        }]}})),
    )
    .await
    .context("adding the DisruptionTarget condition")?;
    let deleting = pods
        .delete(name, &DeleteParams::default())
        .await
        .context("deleting the pod")?;
    let deleted = Instant::now();
    // The grace period the API server gave the deletion (the pod's own).
    let grace = deleting
        .left()
        .and_then(|p| p.metadata.deletion_grace_period_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    o.num(&format!("{tag}_grace_s"), grace.as_secs());
    Ok(Lost {
        name: name.to_owned(),
        uid: uid.to_owned(),
        at,
        deleted,
        grace_end: deleted + grace,
        grace,
        sessions_before,
    })
}

/// Seconds from `t` to now, negative when `t` is still ahead.
fn secs_since(t: Instant) -> f64 {
    let now = Instant::now();
    if now >= t {
        (now - t).as_secs_f64()
    } else {
        -(t - now).as_secs_f64()
    }
}

/// A session handed out after the loss, and still active.
fn new_session(stack: &Stack, before: u64) -> bool {
    session_creates(&stack.fake.stats()).0 > before
        && stack
            .fake
            .scale_sets()
            .first()
            .and_then(|s| stack.fake.session(s.id))
            .is_some_and(|(_, active)| active)
}

/// Without arc-watchdog: what ARC does about the stuck pod, watched until
/// [`WATCH_PAST_GRACE`] after the deletion's grace period.
async fn without_watchdog(stack: &Stack, lost: &Lost, o: &mut Outcome) -> Result<()> {
    let window = lost.grace + WATCH_PAST_GRACE;
    // The observation itself: any listener pod other than the stuck one, or
    // any new session, within the window.
    let replaced = control_plane::eventually(window, "a new listener or session", || async {
        let other_pod = stack.listener_pods().await.ok()?.into_iter().any(|p| {
            p.metadata.uid.as_deref() != Some(lost.uid.as_str())
                && p.metadata.deletion_timestamp.is_none()
        });
        (other_pod || new_session(stack, lost.sessions_before))
            .then(|| lost.at.elapsed().as_secs_f64())
    })
    .await;
    o.num("without_watched_s", window.as_secs());
    match &replaced {
        Ok(t) => o.num("without_replaced_after_loss_s", format!("{t:.1}")),
        Err(_) => o.num("without_replaced_after_loss_s", "never"),
    }
    o.check(
        replaced.is_err(),
        format!(
            "without: no new listener pod and no session within {} s of the deletion (its grace period plus {} s)",
            window.as_secs(),
            WATCH_PAST_GRACE.as_secs()
        ),
    );
    let stuck = pod_by_uid(stack, &lost.name, &lost.uid).await?;
    o.check(
        stuck
            .as_ref()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some() && listener_reads_running(p)),
        "without: the old pod is still there, Terminating, its listener reading Running",
    );
    Ok(())
}

/// With arc-watchdog: the status, the report, the force deletion, and
/// ARC's new listener on the healthy node. Each is awaited from the
/// deletion on, side by side, so that each time is when it happened.
async fn with_watchdog(stack: &Stack, bins: &Binaries, lost: &Lost, o: &mut Outcome) -> Result<()> {
    let reason = Missing::TerminatingOnNotReadyNode.as_str();
    let webhook = stack
        .webhook
        .as_ref()
        .ok_or_else(|| anyhow!("this stack runs no webhook"))?;
    // `arc-watchdog status` while the listener is missing.
    let shown = async {
        status::await_row(
            &bins.watchdog,
            stack.cp.kubeconfig(),
            Duration::from_secs(60),
            "status to show the listener missing",
            |r| status::state(r) == "listener_missing" && r["missing"] == reason,
        )
        .await
        .map(|_| secs_since(lost.deleted))
    };
    // The report: a Warning Event on the AutoscalingRunnerSet.
    let events: Api<EventV1> = Api::namespaced(stack.client.clone(), RUNNER_NS);
    let event = control_plane::eventually(
        lost.grace + REPORT_AFTER + Duration::from_secs(60),
        "the ListenerMissing Event",
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(Reason::ListenerMissing.as_str())
                        && e.related.as_ref().and_then(|r| r.uid.as_deref())
                            == Some(lost.uid.as_str())
                })
                .map(|e| (e, secs_since(lost.grace_end)))
        },
    );
    // The opt-in action: the stuck pod force-deleted. The pod as last seen
    // before it went tells whether anything confirmed the listener's death.
    let last_seen: Mutex<Option<Pod>> = Mutex::new(None);
    let gone = control_plane::eventually(
        lost.grace + DELETE_STUCK_AFTER + Duration::from_secs(60),
        "the stuck pod's deletion",
        || async {
            match pod_by_uid(stack, &lost.name, &lost.uid).await.ok()? {
                Some(p) => {
                    *last_seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(p);
                    None
                }
                None => Some(secs_since(lost.grace_end)),
            }
        },
    );
    // ARC's next listener pod, and its session.
    let recovered = lost.grace + DELETE_STUCK_AFTER + Duration::from_secs(60) + RECOVERY;
    let new_pod = stack.await_new_listener(&lost.uid, lost.at, recovered, "ARC's new listener pod");
    let session = control_plane::eventually(recovered, "the new listener's session", || async {
        new_session(stack, lost.sessions_before).then(|| lost.at.elapsed().as_secs_f64())
    });
    let (shown, event, gone, new_pod, session) = tokio::join!(shown, event, gone, new_pod, session);

    match shown {
        Ok(t) => {
            o.num("with_status_missing_after_deletion_s", format!("{t:.1}"));
            o.check(
                true,
                format!("with: status shows the scale set listener_missing ({reason}) while the pod is stuck"),
            );
        }
        Err(e) => o.check(
            false,
            format!("with: status shows the scale set listener_missing ({reason}): {e:#}"),
        ),
    }
    match event {
        Ok((e, t)) => {
            o.num("with_event_after_grace_s", format!("{t:.1}"));
            let regarding = e.regarding.clone().unwrap_or_default();
            o.check(
                e.type_.as_deref() == Some("Warning")
                    && regarding.kind.as_deref() == Some("AutoscalingRunnerSet")
                    && regarding.name.as_deref() == Some(SCALE_SET)
                    && e.note.as_deref().is_some_and(|n| n.contains(reason)),
                format!(
                    "with: a Warning ListenerMissing Event on the AutoscalingRunnerSet saying {reason}: {:?}",
                    e.note
                ),
            );
        }
        Err(e) => o.check(false, format!("with: the ListenerMissing Event: {e:#}")),
    }
    match gone {
        Ok(t) => {
            o.num("with_force_deleted_after_grace_s", format!("{t:.1}"));
            let earliest = DELETE_STUCK_AFTER.as_secs_f64() - 1.0;
            o.check(
                t >= earliest,
                format!(
                    "with: the stuck pod went {t:.1} s after its grace period ended, not before --delete-stuck-terminating-after ({} s)",
                    DELETE_STUCK_AFTER.as_secs()
                ),
            );
        }
        Err(e) => o.check(
            false,
            format!("with: the stuck pod is force-deleted: {e:#}"),
        ),
    }
    let last = last_seen
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    o.check(
        last.as_ref()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some() && listener_reads_running(p)),
        "with: until it went, the pod stayed Terminating, its listener reading Running (nothing confirmed the death)",
    );
    let counted = control_plane::eventually(Duration::from_secs(10), STUCK_DELETIONS, || async {
        let text = webhook.metrics().await.ok()?;
        control_plane::metric_value(&text, STUCK_DELETIONS, &[("result", "deleted")])
            .filter(|v| *v >= 1.0)
    })
    .await;
    o.check(
        counted.is_ok(),
        format!("with: the webhook deleted it ({STUCK_DELETIONS}{{result=\"deleted\"}})"),
    );
    match new_pod {
        Ok(t) => o.num("with_new_pod_after_loss_s", format!("{t:.1}")),
        Err(e) => o.check(
            false,
            format!("with: ARC creates a new listener pod: {e:#}"),
        ),
    }
    match session {
        Ok(t) => {
            o.num("with_session_after_loss_s", format!("{t:.1}"));
            o.check(
                true,
                format!("with: the new listener has its session {t:.1} s after the loss"),
            );
        }
        Err(e) => o.check(
            false,
            format!("with: the new listener gets its session: {e:#}"),
        ),
    }
    let node = stack
        .listener_pod()
        .await
        .and_then(|p| p.spec.and_then(|s| s.node_name));
    o.check(
        node.as_deref() == Some(NODE_B),
        format!("with: the new listener pod runs on the healthy node {NODE_B} ({node:?})"),
    );
    o.num(
        "with_session_conflicts",
        session_creates(&stack.fake.stats()).1,
    );
    let healthy = status::await_row(
        &bins.watchdog,
        stack.cp.kubeconfig(),
        Duration::from_secs(60),
        "status to show the scale set healthy",
        |r| status::state(r) == "healthy",
    )
    .await;
    o.check(
        healthy.is_ok(),
        "with: status shows the scale set healthy after the recovery",
    );
    o.notes.push(stack.watchdog_events_note("with").await);
    Ok(())
}
